"""Where the weights of WARP live between runs: `WarpState` (theta_sft, theta_init, theta_slerp, finished theta_m)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from warp_lightning.algo import merging


def derive_seed(seed: int, iteration: int, run: int) -> int:
    """Run m of iteration i gets its own seed, a stable function of (seed, i, m)."""
    digest = hashlib.sha256(f"warp-{seed}-{iteration}-{run}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy in CPU memory (where the loop merges) that keeps tied weights tied (GPT-2's wte and lm_head
    stay one tensor)."""
    copies: dict[tuple, torch.Tensor] = {}
    out = {}
    for key, t in state.items():
        alias = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() == 0 or alias not in copies:
            copies[alias] = t.detach().to("cpu", copy=True)
        out[key] = copies[alias]
    return out


@dataclass
class WarpState:
    """Where the weights of WARP live between runs, and the one step that changes them (`merge`).

    theta_sft   the starting policy; never changes.
    theta_init  where every run of the current iteration starts; changed only by `merge` (LITI).
    theta_slerp the merge of the last merged iteration's runs (`merging.MERGES[merge_method]`); set only by `merge`.
    runs        theta_m of the runs finished in the current iteration (`add_run`, called by `MergeRuns`).
    iteration   the iteration being trained: iteration i has merged exactly when `merged(i)`.
    theta_m and theta_ema themselves live in `RLOOModule.policy` / `.anchor` while a run trains.
    """
    theta_sft: dict[str, torch.Tensor]
    runs_per_iteration: int
    merge_method: str = "slerp"
    slerp_lambda: float | None = 0.5
    liti_eta: float = 0.5
    theta_init: dict[str, torch.Tensor] = None
    theta_slerp: dict[str, torch.Tensor] | None = None
    runs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    iteration: int = 1
    merge_stats: list[dict] = field(default_factory=list)
    merge_options: dict = field(default_factory=dict)  # keyword arguments of the merge method (ties: density)

    def __post_init__(self):
        if self.theta_init is None:
            self.theta_init = clone_state(self.theta_sft)

    def add_run(self, theta_m: dict[str, torch.Tensor]) -> None:
        """Keep a finished theta_m of the current iteration (a copy in CPU memory)."""
        if len(self.runs) == self.runs_per_iteration:
            raise RuntimeError(f"iteration {self.iteration} already holds its {self.runs_per_iteration} runs")
        self.runs.append(clone_state(theta_m))

    @property
    def ready_to_merge(self) -> bool:
        return len(self.runs) == self.runs_per_iteration

    def merge(self) -> dict:
        """The merge step of WARP.md, once the M runs of the iteration are in: theta_slerp <- merge(theta_init,
        {theta_m}, lambda), then LITI theta_init <- (1 - eta) theta_init + eta theta_slerp. Returns its statistics."""
        if not self.ready_to_merge:
            raise RuntimeError(f"iteration {self.iteration} has {len(self.runs)} of its {self.runs_per_iteration} runs")
        # lambda applies to two runs (WARP.md); M != 2 uses the recursive 1/m scheme
        self.theta_slerp = merging.merge_runs(self.merge_method, self.theta_init, self.runs, self.slerp_lambda,
                                              **self.merge_options)
        stats = {"iteration": self.iteration, **merging.merge_stats(self.theta_init, self.runs, self.theta_slerp)}
        self.merge_stats.append(stats)
        self.theta_init = merging.liti(self.theta_init, self.theta_slerp, self.liti_eta)
        self.runs = []
        self.iteration += 1
        return stats

    def merged(self, iteration: int) -> bool:
        """Whether iteration i has merged (its theta_slerp and the next theta_init exist)."""
        return self.iteration > iteration

    def finished(self, iteration: int, run: int) -> bool:
        """Whether run m of iteration i is done (its theta_m is in `runs`, or its iteration merged)."""
        return self.merged(iteration) or (iteration == self.iteration and run <= len(self.runs))

    def state_dict(self) -> dict:
        """Everything the loop needs to continue after the last finished run (theta_sft comes from the config)."""
        return {"theta_init": self.theta_init, "theta_slerp": self.theta_slerp, "finished": self.runs,
                "iteration": self.iteration, "merge_stats": self.merge_stats}

    def load_state_dict(self, saved: dict) -> None:
        self.theta_init, self.theta_slerp = saved["theta_init"], saved["theta_slerp"]
        self.runs, self.iteration = list(saved["finished"]), int(saved["iteration"])
        self.merge_stats = list(saved["merge_stats"])
