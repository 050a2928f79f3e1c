"""Stop and resume for the one-process training commands (`sft`, `reward`); config comparison for every resume.

`sft` and `reward` keep `checkpoints/resume.ckpt` in their run folder while they are stopped: on SIGTERM or
SIGINT (utils/signals.py) the optimizer step in progress finishes, a Lightning checkpoint of that step
(weights, optimizer and scheduler, loop progress) is written, and the command stops (exit status 143 or
130). The same command with the same `hydra.run.dir` continues from it (refused in one line if the config
differs), and removes it once the model is saved. A resumed run reaches the same number of steps, but not
bit-identical weights: the data order of the interrupted epoch is not restored (`train`, whose checkpoints
restore every random stream, is bit-identical).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

from warp_lightning import Preempted, UserError
from warp_lightning.utils import signals
from warp_lightning.utils.io import atomic_torch_save
from warp_lightning.utils.loggers import trim_logs

log = logging.getLogger(__name__)

RESUME = "checkpoints/resume.ckpt"


def first_difference(a, b, key: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{key}.{k}")
    return f"{key} ({a!r} then, {b!r} now)"


def check_same_config(saved: dict, current: dict, ignored: set[str], run_dir: Path) -> None:
    """Refuse (UserError, one line) to resume a run whose config differs, the top-level keys in `ignored` aside."""
    for key in sorted(set(saved) | set(current)):
        if key in ignored or key == "hydra":
            continue
        if saved.get(key) != current.get(key):
            diff = first_difference(saved.get(key), current.get(key), key)
            raise UserError(f"{diff} differs from the run being resumed in {run_dir}: run the same config again "
                            "to resume, or choose a new hydra.run.dir")


# top-level keys of sft/reward that do not change what is trained
_IGNORED = {"paths", "logger", "save_to"}


class StopCheckpoint(L.Callback):
    """On a stop signal: the checkpoint of the step just finished, and Lightning's loop told to stop there.

    `resume_from(cfg, out_dir)` says where to resume from (or None); `stop(trainer)` after `fit` raises
    `Preempted` with the step, once the checkpoint is written.
    """

    def __init__(self, out_dir: Path, cfg):
        self.path = Path(out_dir) / RESUME
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self._pending = None
        self.stopped_at: int | None = None

    def resume_from(self, trainer=None) -> Path | None:
        """The checkpoint of an interrupted attempt in this run folder, if its config is ours (and `trainer`'s
        log then keeps the rows of the steps before it)."""
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as err:
            raise UserError(f"checkpoint {self.path} cannot be read ({type(err).__name__}: {err}); delete it to "
                            "start over") from err
        check_same_config(saved.get("warp_resume", {}).get("config", {}), self.config, _IGNORED,
                          self.path.parent.parent)
        step = int(saved.get("global_step", 0))
        log.info("resuming at step %d from %s (the interrupted epoch's data order starts over: close to, not "
                 "bit-identical with, an uninterrupted run)", step, self.path)
        if trainer is not None:
            trim_logs(trainer.logger, step)
        return self.path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.stopped_at is None and signals.stop_requested():
            self.stopped_at = trainer.global_step
            self._pending = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            trainer._signal_connector.received_sigterm = True  # Lightning stops once this step is complete

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint["warp_resume"] = {"config": self.config}

    def on_exception(self, trainer, module, exception):
        if isinstance(exception, SIGTERMException):
            self._write()

    def _write(self) -> None:
        if self._pending is not None:
            atomic_torch_save(self._pending, self.path)
            log.info("checkpoint: step %d in %s", self._pending["global_step"], self.path)
            self._pending = None

    def fit(self, trainer, *args, **kwargs) -> None:
        """`trainer.fit(*args, ckpt_path=<resume>)` with stop signals deferred to the end of a step."""
        with signals.deferred():
            try:
                trainer.fit(*args, ckpt_path=self.resume_from(trainer), weights_only=False, **kwargs)
            except SIGTERMException:
                raise Preempted(signals.requested() or signal.SIGTERM, f"at step {self.stopped_at}",
                                checkpoint=True) from None
            if self.stopped_at is not None:  # asked to stop at the last step: keep it for the next attempt
                self._write()
                raise Preempted(signals.requested() or signal.SIGTERM, f"at step {self.stopped_at}, the last one",
                                checkpoint=True)

    def done(self) -> None:
        """The model is saved: the checkpoint is no longer needed."""
        self.path.unlink(missing_ok=True)
