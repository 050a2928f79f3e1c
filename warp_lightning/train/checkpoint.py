"""Checkpoints of the WARP loop, and exact resume from them.

A train run directory holds

    checkpoints/loop.pt     the loop between runs, written when a run ends: which runs are done (i, m), the
                            `WarpState` (theta_init, the iteration's finished theta_m, theta_slerp, the merge
                            stats), the manifest's run records and the config.
    checkpoints/run_M.ckpt  run m in progress (one per run: with trainer=ddp_runs they train at once), every
                            `warp.checkpoint_every` steps and at a stop: a Lightning checkpoint (theta_m,
                            theta_ema, optimizer, scheduler, loop progress) plus (i, m, t) and every RNG state
                            (`RunCheckpoint`). Removed once its run is recorded in loop.pt.

Both are written to a temporary name and renamed (`io.atomic_file`), so a kill at any moment leaves the
previous complete file. Running `train` again with the same `hydra.run.dir` resumes from them: finished
runs are skipped and the run in progress continues at step t with the same weights, optimizer moments,
prompt stream position and random streams, so the final weights are bit-identical on CPU.

SIGTERM or SIGINT during a run (runtime/signals.py) is a checkpoint too: the step in progress finishes, run_M.ckpt
is written exactly as at a `checkpoint_every` step, and the command stops (exit status 143 or 130) with one
line saying how to resume. The mechanism is the one `sft` and `reward` use (runtime/resume.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.plugins.io import TorchCheckpointIO

from warp_lightning.runtime.resume import FORMAT, StopCheckpoint, check_same_config, read_checkpoint
from warp_lightning.utils.io import atomic_torch_save

log = logging.getLogger(__name__)

LOOP = "loop.pt"


def run_path(ckpt_dir: Path, m: int) -> Path:
    """The checkpoint of run m in progress."""
    return Path(ckpt_dir) / f"run_{m}.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but written under a temporary name and renamed."""
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_torch_save(checkpoint, path)


class RunCheckpoint(StopCheckpoint):
    """The `StopCheckpoint` of run m of iteration i: every `every` steps, every random stream restored on resume,
    and no checkpoint at the run's last step (the loop stops between runs instead, after loop.pt). It keeps the
    run's config and compares it on resume (`may_change` aside): before the first run ends there is no loop.pt to
    compare against."""

    def __init__(self, path: Path, every: int, iteration: int, run: int, every_rank: bool = False,
                 config: dict | None = None, may_change=frozenset()):
        super().__init__(path, every, {"iteration": iteration, "run": run}, exact=True, last_step=False,
                         config=config, every_rank=every_rank, may_change=may_change)


def save_loop(ckpt_dir: Path, state, done: tuple[int, int], runs: list[dict], config: dict) -> None:
    """Record that run `done` = (i, m) has finished, with everything the loop needs after it."""
    atomic_torch_save({"format": FORMAT, "done": list(done), "config": config, "runs": runs, **state.state_dict()},
                      Path(ckpt_dir) / LOOP)
    for m in range(1, done[1] + 1):  # the runs recorded here no longer need their own checkpoints
        run_path(ckpt_dir, m).unlink(missing_ok=True)


def load_loop(ckpt_dir: Path, state, config: dict, may_change=frozenset()) -> tuple[tuple[int, int], list[dict]]:
    """Restore `state` from loop.pt; returns the last finished (i, m) and the run records ((1, 0), [] if none).
    `config` must be loop.pt's but for the (dotted) keys of `may_change`."""
    for stale in Path(ckpt_dir).glob(".*.tmp"):  # left by a kill during a write; never read
        stale.unlink(missing_ok=True)
    path = Path(ckpt_dir) / LOOP
    if not path.exists():
        return (1, 0), []
    saved = read_checkpoint(path)
    check_same_config(saved["config"], config, path.parent.parent, may_change)
    state.load_state_dict(saved)
    return tuple(saved["done"]), saved["runs"]
