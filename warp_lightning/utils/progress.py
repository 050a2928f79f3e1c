"""Progress in the log: one short line every N optimizer steps (the progress bar is for terminals only)."""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger("warp_lightning.progress")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressLog(L.Callback):
    """`WHAT step t/T: key value, ... (s/step, time left)` every `every` steps and at the last one, from the
    metrics the module logged (`keys`: which, in order; all of them when None). 0: never."""

    def __init__(self, every: int, what: str, keys: tuple[str, ...] | None = None):
        self.every, self.what, self.keys = every, what, keys

    def on_train_start(self, trainer, module):
        self._started, self._first = time.time(), trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        t, total = trainer.global_step, trainer.max_steps
        if not self.every or not trainer.is_global_zero or (t % self.every and t != total):
            return
        metrics = trainer.callback_metrics
        keys = self.keys or sorted(metrics)
        shown = ", ".join(f"{k} {float(metrics[k]):.4g}" for k in keys if k in metrics and metrics[k].numel() == 1)
        per_step = (time.time() - self._started) / max(1, t - self._first)
        left = f", {_duration(per_step * (total - t))} left" if total and total > 0 else ""
        log.info("%s step %d/%s: %s (%.2f s/step%s)", self.what, t, total if total and total > 0 else "?", shown,
                 per_step, left)
