"""The WARP loop on torch.distributed, through Lightning's launcher and cluster environments.

Three layouts (`conf/trainer/`):

- `ddp_runs`: one process per run. The M runs of an iteration train at the same time, each in its own
  process with its own seed, prompts and optimizer (no gradient all-reduce: they are independent RL
  runs); the merge all-gathers the M theta_m so that every process computes the same SLERP and LITI.
  With the same seeds the merged weights equal those of the sequential loop.
- `ddp`: data-parallel training of each run. Every process takes a shard of each step's prompts (whole
  groups of k samples, so RLOO baselines stay within a process) and DDP averages the gradients.
- `fsdp`: the same data parallelism with sharded weights (FSDP2 `fully_shard`, through Lightning's
  `ModelParallelStrategy`): each process keeps 1/world of every weight, gradient and Adam moment of
  theta_m, theta_ema and theta_init, and gathers a model's weights only while it computes with them
  (each transformer block on its own, all of them while sampling, the embeddings and head for the whole
  call: `shard_model`).

Processes are started once, before the loop, by Lightning's launcher (`python -m warp_lightning ...`
is re-run for each local rank with the same Hydra run directory; SLURM and torchelastic environments
start them externally). Rank 0 writes every output.

The private members of Lightning's strategies that these subclasses override, set or call are listed in
runtime/internals.py (`OVERRIDES`), where a test checks them against the installed Lightning.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, ParallelStrategy

from warp_lightning.runtime import internals

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
        internals.log_on_every_rank()


class ShardedStrategy(ModelParallelStrategy):
    """FSDP2 over all processes (data parallel, no tensor parallelism); `RLOOModule.configure_model` shards.

    Run checkpoints are whole files written by rank 0 (the weights and Adam moments gathered), so that
    `run_M.ckpt` reads the same whatever the number of processes that wrote it.
    """

    strategy_name = "fsdp"

    def __init__(self, process_group_backend: str | None = None):
        super().__init__(tensor_parallel_size=1, save_distributed_checkpoint=False,
                         process_group_backend=process_group_backend)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        if self.lightning_module is None:  # `start_processes`, before any run: the process group only
            ParallelStrategy.setup_environment(self)
            self._setup_distributed()
            return
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        # Lightning 2.6 drops `fit(..., weights_only=False)` on this strategy's path (restore after setup); a run
        # checkpoint holds RNG states (numpy arrays) and is our own file, so it is read in full
        return super().load_checkpoint(checkpoint_path, weights_only=False if weights_only is None else weights_only)


STRATEGIES = {"ddp_runs": IndependentRunsStrategy, "ddp": DDPStrategy, "fsdp": ShardedStrategy}


def strategy_for(cfg):
    name = cfg.trainer.get("strategy", "auto")
    if name in STRATEGIES:
        return STRATEGIES[name](process_group_backend=cfg.trainer.get("process_group_backend"))
    return name


def start_processes(trainer) -> tuple[int, int]:
    """Start the other processes now (not at the first `fit`) and join the process group: (rank, world)."""
    strategy = trainer.strategy
    if not isinstance(strategy, ParallelStrategy):
        return 0, 1
    if strategy.launcher is not None and not strategy.cluster_environment.creates_processes_externally:
        strategy.launcher.launch(lambda: None)
    strategy.setup_environment()
    if isinstance(strategy, IndependentRunsStrategy):
        internals.log_on_every_rank()
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
    if dist.get_backend() == "nccl":  # NCCL sends from GPU memory only
        flat = flat.to(torch.device("cuda", torch.cuda.current_device()))
    parts = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(parts, flat.contiguous())
    out = []
    for part in parts:
        rebuilt, offset = {}, 0
        for key_id, t in unique.items():
            rebuilt[key_id] = part[offset : offset + t.numel()].view_as(t).to("cpu", copy=True)
            offset += t.numel()
        out.append({k: rebuilt[id(t)] for k, t in state.items()})
    return out


