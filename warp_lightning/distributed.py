"""The WARP loop on torch.distributed, through Lightning's DDP launcher and cluster environments.

Two layouts (`conf/trainer/`):

- `ddp_runs`: one process per run. The M runs of an iteration train at the same time, each in its own
  process with its own seed, prompts and optimizer (no gradient all-reduce: they are independent RL
  runs); the merge all-gathers the M theta_m so that every process computes the same SLERP and LITI.
  With the same seeds the merged weights equal those of the sequential loop.
- `ddp`: data-parallel training of each run. Every process takes a shard of each step's prompts (whole
  groups of k samples, so RLOO baselines stay within a process) and DDP averages the gradients.

Processes are started once, before the loop, by Lightning's launcher (`python -m warp_lightning ...`
is re-run for each local rank with the same Hydra run directory; SLURM and torchelastic environments
start them externally). Rank 0 writes every output.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


class IndependentRunsStrategy(DDPStrategy):
    """DDP's process group and launcher without DDP's gradient synchronisation: one run per process.

    Every process logs (its run has its own log folder), so `rank_zero_only` is lifted.
    """

    strategy_name = "ddp_runs"

    def _setup_model(self, model):
        return model

    def _register_ddp_hooks(self) -> None:
        pass

    def set_world_ranks(self) -> None:
        super().set_world_ranks()
        rank_zero_only.rank = 0


def strategy_for(cfg):
    name = cfg.trainer.get("strategy", "auto")
    if name == "ddp_runs":
        return IndependentRunsStrategy(process_group_backend=cfg.trainer.get("process_group_backend"))
    if name == "ddp":
        return DDPStrategy(process_group_backend=cfg.trainer.get("process_group_backend"))
    return name


def start_processes(trainer) -> tuple[int, int]:
    """Start the other processes now (not at the first `fit`) and join the process group: (rank, world)."""
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        return 0, 1
    if strategy.launcher is not None and not strategy.cluster_environment.creates_processes_externally:
        strategy.launcher.launch(lambda: None)
    strategy.setup_environment()
    if isinstance(strategy, IndependentRunsStrategy):
        rank_zero_only.rank = 0
    return strategy.global_rank, strategy.world_size


def gather_states(state: dict[str, torch.Tensor], world: int) -> list[dict[str, torch.Tensor]]:
    """Every process's `state` (same keys and shapes everywhere), in rank order, on every process.

    Weights are gathered as they are (not as differences), so each copy is bit-exact; tied tensors are
    sent once and stay tied.
    """
    unique: dict[int, torch.Tensor] = {}
    for t in state.values():
        unique.setdefault(id(t), t)
    flat = torch.cat([t.detach().reshape(-1).float() for t in unique.values()]) if unique else torch.zeros(0)
    dtypes = {t.dtype for t in unique.values()}
    if dtypes - {torch.float32}:
        raise ValueError(f"gather_states sends float32 weights, got {sorted(map(str, dtypes))}")
    parts = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(parts, flat.contiguous())
    out = []
    for part in parts:
        rebuilt, offset = {}, 0
        for key_id, t in unique.items():
            rebuilt[key_id] = part[offset : offset + t.numel()].view_as(t).clone()
            offset += t.numel()
        out.append({k: rebuilt[id(t)] for k, t in state.items()})
    return out
