"""Build the configured Lightning logger (CSV, TensorBoard, W&B) for one run."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.utils import instantiate

from warp_lightning.runtime import internals


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


def trim_logs(logger, step: int) -> None:
    """Before a run resumes at `step`, drop what the interrupted attempt logged from `step` on.

    CSV: the rows before `step` are carried into the new writer (Lightning's CSV writer starts a fresh
    file); TensorBoard: the writer purges events from `step` on. W&B offline runs are per attempt.
    """
    import csv

    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # trainer=ddp or fsdp: rank 0 alone logs (its logger is a stand-in elsewhere)
        return
    name = type(logger).__name__ if logger else ""
    if name == "TensorBoardLogger":
        internals.purge_tensorboard_from(logger, step)
    elif name == "CSVLogger":
        path = Path(logger.log_dir) / "metrics.csv"
        kept = []
        if path.exists():
            with open(path, newline="") as f:
                kept = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)
                        if row.get("step", "") != "" and int(row["step"]) < step]
        logger.experiment.metrics[:0] = kept  # the writer has removed the old file: write them back now
        logger.save()
