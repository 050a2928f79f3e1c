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
    """Where the weights of WARP live and who changes them.

    theta_sft   the starting policy; never changes.
    theta_init  where every run of the current iteration starts; changed only by `finish_run` (LITI)
                when the M-th run of an iteration ends.
    theta_slerp the merge of the iteration's runs; set only by `finish_run`.
    runs        theta_m of the runs finished in the current iteration (handed over by `MergeRuns`).
    theta_m and theta_ema themselves live in `RLOOModule.policy` / `.anchor` while a run trains.
    """
    theta_sft: dict[str, torch.Tensor]
    runs_per_iteration: int
    merge: str = "slerp"
    slerp_lambda: float | None = 0.5
    liti_eta: float = 0.5
    theta_init: dict[str, torch.Tensor] = None
    theta_slerp: dict[str, torch.Tensor] | None = None
    runs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    iteration: int = 1
    merge_stats: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.theta_init is None:
            self.theta_init = clone_state(self.theta_sft)

    def finish_run(self, theta_m: dict[str, torch.Tensor]) -> None:
        self.runs.append(clone_state(theta_m))
        if len(self.runs) == self.runs_per_iteration:
            self._merge_and_interpolate()

    def _merge_and_interpolate(self) -> None:
        # lambda applies to two runs (WARP.md); M != 2 uses the recursive 1/m scheme
        lam = self.slerp_lambda if len(self.runs) == 2 else None
        merge_fn = merging.slerp if self.merge == "slerp" else merging.linear
        self.theta_slerp = merge_fn(self.theta_init, self.runs, lam)
        self.merge_stats.append({"iteration": self.iteration,
                                 **merging.merge_stats(self.theta_init, self.runs, self.theta_slerp)})
        self.theta_init = merging.liti(self.theta_init, self.theta_slerp, self.liti_eta)
        self.runs = []
        self.iteration += 1
