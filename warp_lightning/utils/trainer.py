"""The one place a Lightning Trainer is built: `conf/trainer/*.yaml` (its `_target_` and fixed flags), the
command's own arguments (steps, callbacks, logger, validation cadence), device and precision resolved."""

from __future__ import annotations

import logging
import sys

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from warp_lightning.runtime import internals
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
    internals.take_over_signals(trainer)  # SIGTERM and SIGINT are runtime/signals.py's (internals.py says why)
    return trainer


def log_device(trainer_cfg) -> str:
    """Log (once per command) where and in which precision it computes; returns the line for the manifest."""
    line = describe(trainer_device(trainer_cfg), trainer_precision(trainer_cfg))
    log.info("computing on %s", line)
    return line
