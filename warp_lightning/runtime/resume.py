"""Stop and resume, for every training command (`train`, `sft`, `reward`): one callback, one checkpoint reader,
and one config comparison.

- `StopCheckpoint`, the callback: on SIGTERM or SIGINT (runtime/signals.py) the optimizer step in progress
  finishes, a Lightning checkpoint of that step (weights, optimizer and scheduler, loop progress, the random
  streams) is written, and the command stops with `Preempted` (exit status 143 or 130); `every` > 0 also writes
  one every `every` steps. The same command with the same `hydra.run.dir` continues from it (`resume_from`).
  `train` keeps one per run (`checkpoints/run_M.ckpt`, train/checkpoint.py) and restores every random stream,
  so its resumed runs are bit-identical; `sft` and `reward` write `checkpoints/resume.ckpt` at a stop and when
  their fit ends, and keep it until their model is saved (a stop or a kill after the fit, in the centring or the
  evaluation, resumes at the last step with nothing to train again). A run resumed in the middle of its fit
  reaches the same number of steps, but not bit-identical weights: the data order is not restored (the
  interrupted epoch starts over from its first batch, so its first b batches are seen twice and its last b not at
  all, and each later epoch takes the order the one before it had).
- `read_checkpoint`: every checkpoint we wrote is read through it; one that cannot be read is one line.
- `check_same_config`: a resume with another config is refused in one line, naming the first difference.
- One command at a time in a run folder: `lock.claim_run_dir` (the CLI takes it).
"""

from __future__ import annotations

import logging
import random
import signal
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

from warp_lightning import Preempted, UserError
from warp_lightning.runtime import internals, signals
from warp_lightning.utils.commands import first_difference, without
from warp_lightning.utils.io import atomic_torch_save
from warp_lightning.utils.loggers import trim_logs

log = logging.getLogger(__name__)

FORMAT = 1
RESUME = "checkpoints/resume.ckpt"  # sft, reward


def read_checkpoint(path: Path) -> dict:
    """A checkpoint we wrote (memory-mapped on the CPU), or UserError in one line."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # a file we did not write (renames are atomic), or a newer torch's format
        raise UserError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); delete it to start "
                        "that run again") from err
    if "warp_resume" in saved:  # sft/reward before the format was recorded
        saved["warp"] = {"format": FORMAT, "step": saved.get("global_step", 0), **saved.pop("warp_resume")}
    if saved.get("format", saved.get("warp", {}).get("format")) != FORMAT:
        raise UserError(f"checkpoint {path} has an unknown format; delete it to start that run again")
    return saved


def check_same_config(saved: dict, current: dict, run_dir: Path, may_change=frozenset()) -> None:
    """Refuse (UserError, one line) to resume a run whose config differs, the (dotted) keys of `may_change` aside
    (the command's record says which: utils/commands.py `Command.resume`)."""
    saved, current = without(saved, may_change), without(current, may_change)
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            diff = first_difference(saved.get(key), current.get(key), key)
            raise UserError(f"{diff} differs from the run being resumed in {run_dir}: run the same config again "
                            "to resume, or choose a new hydra.run.dir")


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


class StopCheckpoint(L.Callback):
    """Checkpoint the step just finished when the command is asked to stop (and every `every` steps), and stop.

    The checkpoint is taken at the end of step t (after the EMA update, where Lightning's loop expects a
    restart) and written when step t+1 starts, once step t's metrics are in the logger and flushed: a resumed
    run then logs exactly the rows an uninterrupted one would. A stop signal is read at the end of every step
    (the same answer in every process that trains in lockstep): the checkpoint of step t is taken as above,
    Lightning's loop is told to stop after the step (its `SIGTERMException`, once step t's metrics are logged),
    and the checkpoint is written in `on_exception`, as it would have been at the start of step t+1.

    `tags`: what the checkpoint belongs to (train: its iteration and run), checked by `resume_from` and named in
    the log lines. `exact`: restore every random stream (the module's `generator` too, if it has one) on resume.
    `last_step`: a stop at the last step is checkpointed too (False for train, whose loop stops after the run,
    with loop.pt). `config`: kept in the checkpoint and compared on resume but for the (dotted) keys of
    `may_change` (train compares it in loop.pt).
    `every_rank`: each process writes its own file (trainer=ddp_runs) and reads the stop from the others without
    a collective; otherwise global rank 0 writes.
    """

    def __init__(self, path: Path, every: int = 0, tags: dict | None = None, exact: bool = False,
                 last_step: bool = True, config: dict | None = None, every_rank: bool = False,
                 may_change=frozenset()):
        self.path, self.every, self.tags, self.exact = Path(path), every, dict(tags or {}), exact
        self.may_change = frozenset(may_change)
        self.last_step, self.config, self.every_rank = last_step, config, every_rank
        self.where = "".join(f"{k} {v} " for k, v in self.tags.items())  # "iteration 1 run 2 "
        self._pending = None
        self.stopped_at: int | None = None  # the step after which a stop signal stopped the run
        self.resumed_at = 0  # the step `resume_from` found

    def resume_from(self, trainer=None) -> Path | None:
        """The checkpoint of an interrupted attempt, if it is ours (its tags, its config); `trainer`'s log then
        keeps the rows of the steps before it. None: start from step 0 (a stale file of another run is ignored)."""
        if not self.path.exists():
            return None
        warp = read_checkpoint(self.path)["warp"]
        if any(warp.get(k) != v for k, v in self.tags.items()):
            return None
        if self.config is not None:
            check_same_config(warp.get("config", {}), self.config, self.path.parent.parent, self.may_change)
        self.resumed_at = int(warp["step"])
        log.info("resuming %sat step %d from %s%s", self.where, self.resumed_at, self.path, "" if self.exact else
                 " (the interrupted epoch's data order starts over from its first batch: close to, not bit-identical "
                 "with, an uninterrupted run)")
        if trainer is not None:
            trim_logs(trainer.logger, self.resumed_at)
        return self.path

    def fit(self, trainer, *args, ckpt_path: Path | None = None, **kwargs) -> None:
        """`trainer.fit(*args, ckpt_path=...)` with stop signals deferred to the end of a step, and a stop raised
        as `Preempted` once its checkpoint is written."""
        with signals.deferred():
            try:
                trainer.fit(*args, ckpt_path=ckpt_path, weights_only=False, **kwargs)  # our own checkpoint
            except SIGTERMException:  # asked to stop: step t is complete and its checkpoint written
                if self.every_rank:
                    signals.linger()  # the other runs read the stop from the store that this process may host
                step = self.stopped_at if self.stopped_at is not None else trainer.global_step
                raise Preempted(signals.requested() or signal.SIGTERM, f"at {self.where}step {step}",
                                checkpoint=True) from None
            if self.stopped_at is not None:  # asked to stop at the last step: keep it for the next attempt
                self._write(trainer)
                raise Preempted(signals.requested() or signal.SIGTERM,
                                f"at {self.where}step {self.stopped_at}, the last one", checkpoint=True)
            if self.last_step:  # the fit is over: kept until the model is saved (`done`), so that a stop or a kill
                self._pending = internals.dump_checkpoint(trainer)  # in what follows (centring, evaluation, the
                self._write(trainer)  # save) resumes at the last step, with nothing to train again

    def done(self) -> None:
        """The model is saved: the checkpoint is no longer needed."""
        self.path.unlink(missing_ok=True)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        t = trainer.global_step
        stop = signals.stop_now(trainer.strategy.root_device, independent=self.every_rank)  # every step, every rank
        more = t < trainer.max_steps
        if stop and (more or self.last_step) and self.stopped_at is None:
            self.stopped_at = t
            internals.stop_after_this_step(trainer)  # Lightning stops once this step is complete
        if self.stopped_at == t or (more and self.every and t % self.every == 0):
            # references to the live tensors: nothing changes them before the next step starts
            self._pending = internals.dump_checkpoint(trainer)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self._pending is not None:
            self._write(trainer)

    def on_exception(self, trainer, module, exception):
        if isinstance(exception, SIGTERMException) and self._pending is not None:
            self._write(trainer)

    def _write(self, trainer) -> None:
        if trainer.logger:
            trainer.logger.save()
        if self.every_rank or trainer.world_size == 1:
            atomic_torch_save(self._pending, self.path)
        else:
            trainer.strategy.save_checkpoint(self._pending, self.path)  # global rank 0 writes
        if self.every_rank or trainer.is_global_zero:  # the process that wrote it, once written
            log.info("checkpoint: %sstep %d in %s", self.where, self._pending["global_step"], self.path)
        self._pending = None

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint["warp"] = {"format": FORMAT, **self.tags, "step": trainer.global_step,
                              "rng": rng_states(getattr(module, "generator", None))}
        if self.config is not None:
            checkpoint["warp"]["config"] = self.config

    def on_load_checkpoint(self, trainer, module, checkpoint):
        if self.exact:
            set_rng_states(checkpoint["warp"]["rng"], getattr(module, "generator", None))


def command_checkpoint(out_dir: Path, cfg, may_change) -> StopCheckpoint:
    """`sft`'s and `reward`'s: `checkpoints/resume.ckpt` in the run folder, written at a stop, with the config
    that a resume must share but for the keys of `may_change` (the command's `Command.resume`)."""
    return StopCheckpoint(Path(out_dir) / RESUME, config=OmegaConf.to_container(cfg, resolve=True),
                          may_change=may_change)
