"""Build the configured Lightning logger (CSV, TensorBoard, W&B) for one run."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.utils import instantiate


def build_logger(cfg, save_dir: str | Path, run_name: str, group: str | None = None):
    """Instantiate `cfg` (a `_target_` logger config, or null for none) for the run `run_name`.

    W&B runs are named by `run_name` and grouped by `group` (the experiment); they stay offline unless
    an API key is in the environment and `logger.offline=false`.
    """
    if cfg is None or not cfg.get("_target_"):
        return False
    if cfg._target_.endswith("WandbLogger"):
        offline = bool(cfg.get("offline", True)) or not os.environ.get("WANDB_API_KEY")
        return instantiate(cfg, save_dir=str(save_dir), name=run_name, group=group, offline=offline,
                           reinit="create_new")
    return instantiate(cfg, save_dir=str(save_dir), version=run_name)


def finish_logger(logger) -> None:
    """Close a W&B run so the next run of the loop starts its own."""
    if logger and type(logger).__name__ == "WandbLogger":
        logger.experiment.finish()
