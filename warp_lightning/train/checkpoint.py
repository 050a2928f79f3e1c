"""Checkpoints of the WARP loop, and exact resume from them.

A train run directory holds

    checkpoints/loop.pt   the loop between runs, written when a run ends: which runs are done (i, m),
                          theta_init, the iteration's finished theta_m, theta_slerp, the merge stats and
                          the manifest's run records.
    checkpoints/run_M.ckpt the run m in progress, every `warp.checkpoint_every` steps: a Lightning checkpoint
                          (theta_m, theta_ema, optimizer, scheduler, loop progress) plus (i, m, t) and
                          every RNG state. Removed once its run is recorded in loop.pt.

Both are written to a temporary name and renamed (`io.atomic_file`), so a kill at any moment leaves the
previous complete file. Running `train` again with the same `hydra.run.dir` resumes from them: finished
runs are skipped and the run in progress continues at step t with the same weights, optimizer moments,
prompt stream position and random streams, so the final weights are bit-identical on CPU.

SIGTERM or SIGINT during a run (utils/signals.py) is a checkpoint too: the step in progress finishes, run_M.ckpt
is written exactly as at a `checkpoint_every` step, and the command stops (exit status 143 or 130) with one
line saying how to resume.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from warp_lightning import UserError
from warp_lightning.utils import signals
from warp_lightning.utils.io import atomic_torch_save
from warp_lightning.utils.resume import check_same_config

log = logging.getLogger(__name__)

LOOP = "loop.pt"


def run_path(ckpt_dir: Path, m: int) -> Path:
    """The checkpoint of run m in progress (one per run: with trainer=ddp_runs they train at once)."""
    return Path(ckpt_dir) / f"run_{m}.ckpt"

FORMAT = 1


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but written under a temporary name and renamed."""
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_torch_save(checkpoint, path)


def rng_states(generator: torch.Generator | None = None) -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "sampling": None if generator is None else generator.get_state()}


def set_rng_states(states: dict, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if states.get("cuda") is not None:
        torch.cuda.set_rng_state_all(states["cuda"])
    if generator is not None and states["sampling"] is not None:
        generator.set_state(states["sampling"])


class RunCheckpoint(L.Callback):
    """Save the run in progress every `every` optimizer steps, and when the command is asked to stop.

    The checkpoint is taken at the end of step t (after the EMA update, where Lightning's loop expects
    a restart) and written when step t+1 starts, once step t's metrics are in the logger and flushed:
    a resumed run then logs exactly the rows an uninterrupted one would.

    A stop signal (utils/signals.py) is read at the end of every step (the same answer in every process that
    trains in lockstep): the checkpoint of step t is taken as above, Lightning's loop is told to stop after
    the step (its `SIGTERMException`, which it raises once step t's metrics are logged), and the checkpoint is
    written in `on_exception`, as it would have been at the start of step t+1. At the run's last step there
    is nothing to save: the loop stops between runs instead, after loop.pt.
    """

    def __init__(self, path: Path, every: int, iteration: int, run: int, every_rank: bool = False):
        self.path, self.every, self.iteration, self.run = Path(path), every, iteration, run
        self.every_rank = every_rank  # trainer=ddp_runs: each process saves its own run
        self._pending = None
        self.stopped_at: int | None = None  # the step after which a stop signal stopped the run

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        t = trainer.global_step
        stop = signals.stop_now(trainer.strategy.root_device, independent=self.every_rank)
        if t < trainer.max_steps and ((self.every and t % self.every == 0) or stop):
            # references to the live tensors: nothing changes them before the next step starts
            self._pending = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        if stop and t < trainer.max_steps:
            self.stopped_at = t
            trainer._signal_connector.received_sigterm = True  # Lightning stops once this step is complete

    def on_exception(self, trainer, module, exception):
        if isinstance(exception, SIGTERMException) and self._pending is not None:
            self._write(trainer)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self._pending is not None:
            self._write(trainer)

    def _write(self, trainer):
        if trainer.logger:
            trainer.logger.save()
        if self.every_rank:
            atomic_torch_save(self._pending, self.path)
        else:
            trainer.strategy.save_checkpoint(self._pending, self.path)  # global rank 0 writes
        if self.every_rank or trainer.is_global_zero:  # the process that wrote it, once written
            log.info("checkpoint: iteration %d run %d step %d", self.iteration, self.run, self._pending["global_step"])
        self._pending = None

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint["warp"] = {"format": FORMAT, "iteration": self.iteration, "run": self.run,
                              "step": trainer.global_step, "rng": rng_states(module.generator)}

    def on_load_checkpoint(self, trainer, module, checkpoint):
        set_rng_states(checkpoint["warp"]["rng"], module.generator)


def save_loop(ckpt_dir: Path, state, done: tuple[int, int], runs: list[dict], config: dict) -> None:
    """Record that run `done` = (i, m) has finished, with everything the loop needs after it."""
    atomic_torch_save({"format": FORMAT, "done": list(done), "config": config, "runs": runs,
                       "theta_init": state.theta_init, "theta_slerp": state.theta_slerp,
                       "finished": state.runs, "iteration": state.iteration,
                       "merge_stats": state.merge_stats}, Path(ckpt_dir) / LOOP)
    for m in range(1, done[1] + 1):  # the runs recorded here no longer need their own checkpoints
        run_path(ckpt_dir, m).unlink(missing_ok=True)


def load_loop(ckpt_dir: Path, state, config: dict) -> tuple[tuple[int, int], list[dict]]:
    """Restore `state` from loop.pt; returns the last finished (i, m) and the run records ((1, 0), [] if none)."""
    for stale in Path(ckpt_dir).glob(".*.tmp"):  # left by a kill during a write; never read
        stale.unlink(missing_ok=True)
    path = Path(ckpt_dir) / LOOP
    if not path.exists():
        return (1, 0), []
    saved = _load(path)
    _same_config(saved["config"], config, path)
    state.theta_init, state.theta_slerp = saved["theta_init"], saved["theta_slerp"]
    state.runs, state.iteration, state.merge_stats[:] = saved["finished"], saved["iteration"], saved["merge_stats"]
    return tuple(saved["done"]), saved["runs"]


def run_checkpoint(ckpt_dir: Path, iteration: int, run: int) -> Path | None:
    """run_M.ckpt if it belongs to run (i, m), else None (a stale one from a finished run is ignored)."""
    path = run_path(ckpt_dir, run)
    if not path.exists():
        return None
    warp = _load(path).get("warp", {})
    return path if (warp.get("iteration"), warp.get("run")) == (iteration, run) else None


def checkpoint_step(path: Path) -> int:
    return int(_load(path)["warp"]["step"])


def _load(path: Path) -> dict:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # a file we did not write (renames are atomic), or a newer torch's format
        raise UserError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); delete it to start "
                        "that run again") from err
    if saved.get("format", saved.get("warp", {}).get("format")) != FORMAT:
        raise UserError(f"checkpoint {path} has an unknown format; delete it to start that run again")
    return saved


# keys that may differ between the first attempt and the resumed one without changing the result
_RESUMABLE = {"logger", "paths", "eval"}


def _same_config(saved: dict, current: dict, path: Path) -> None:
    check_same_config(saved, current, _RESUMABLE, path.parent.parent)
