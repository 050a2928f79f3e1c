"""The one place a Lightning Trainer is built: `conf/trainer/*.yaml` (its `_target_` and fixed flags), the
command's own arguments (steps, callbacks, logger, validation cadence), device and precision resolved."""

from __future__ import annotations

import logging
import sys

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from omegaconf import OmegaConf

from warp_lightning.utils.precision import describe, device_for, resolve_precision

log = logging.getLogger(__name__)

NOT_TRAINER_ARGS = ("process_group_backend",)  # read by the strategy (train/strategies.py), not the Trainer


def trainer_device(trainer_cfg) -> torch.device:
    return device_for(str(trainer_cfg.accelerator))


def trainer_precision(trainer_cfg) -> str:
    """`trainer.precision` with `auto` resolved for this process's device (utils/precision.py)."""
    return resolve_precision(trainer_cfg.precision, trainer_device(trainer_cfg))


def build_trainer(trainer_cfg, **arguments) -> L.Trainer:
    """Instantiate `trainer_cfg` with `arguments` (which win over the config: max_steps, callbacks, logger,
    strategy, ...). On CUDA, fp32 matmuls may use TF32 (as Lightning advises for tensor cores)."""
    config = OmegaConf.to_container(trainer_cfg, resolve=True)
    for key in NOT_TRAINER_ARGS:
        config.pop(key, None)
    device = trainer_device(trainer_cfg)
    config["precision"] = resolve_precision(config.get("precision", "auto"), device)
    if config.get("enable_progress_bar") is None:
        config["enable_progress_bar"] = sys.stderr.isatty()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    trainer = instantiate(config, **arguments, _convert_="all")
    trainer._signal_connector = _OurSignals(trainer)
    # Lightning broadcasts rank 0's SIGTERM flag before every step of every multi-process run: a collective per
    # step that would tie trainer=ddp_runs' independent runs to the same step counts (they may differ after a
    # resume). `signals.stop_now` does that job, with an all-reduce where the processes are in lockstep.
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None
    return trainer


class _OurSignals(_SignalConnector):
    """Lightning's signal connector without its handlers: SIGTERM and SIGINT are handled by utils/signals.py.

    Lightning's SIGTERM handler (2.6) forwards the signal to the processes its launcher started, broadcasts a
    tensor from inside the handler (a collective at an arbitrary point: a deadlock risk under DDP) and makes
    the loop stop after whichever step is running, while our checkpoint callbacks decide when to stop
    (`signals.stop_now`) and set `received_sigterm` themselves, so that Lightning's loop stops once that step
    is complete. (Lightning's SLURM auto-requeue on SIGUSR1 is off with it; SLURM's SIGTERM before a kill is
    handled by ours.)
    """

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False

    def teardown(self) -> None:
        pass


def log_device(trainer_cfg) -> str:
    """Log (once per command) where and in which precision it computes; returns the line for the manifest."""
    line = describe(trainer_device(trainer_cfg), trainer_precision(trainer_cfg))
    log.info("computing on %s", line)
    return line
