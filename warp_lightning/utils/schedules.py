"""The learning-rate schedule of every stage: linear warm-up, then constant (RL), cosine (SFT) or linear
decay (reward model)."""

from __future__ import annotations

import math

import torch

DECAYS = ("constant", "cosine", "linear")


def warmup_factor(step: int, warmup_steps: int, total_steps: int = 0, decay: str = "constant",
                  floor: float = 0.0) -> float:
    """The factor on the base learning rate at optimizer step `step` (counted from 0).

    constant: (step + 1) / warm up to 1, then 1. cosine: then from 1 down to `floor` at `total_steps`.
    linear: then from 1 down to 0 at `total_steps`.
    """
    warm, total = max(1, warmup_steps), max(1, total_steps)
    if decay == "constant":
        return min(1.0, (step + 1) / warm)
    if decay == "cosine":
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) / 2 * (1 + math.cos(math.pi * progress))
    if decay == "linear":
        return min((step + 1) / warm, max(0.0, (total - step) / max(1, total - warm)))
    raise ValueError(f"unknown schedule {decay!r}: choose one of {', '.join(DECAYS)}")


def warmup_schedule(optimizer, warmup_steps: int, total_steps: int = 0, decay: str = "constant",
                    floor: float = 0.0) -> dict:
    """Lightning's `lr_scheduler` entry: `warmup_factor` stepped after every optimizer step."""
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_factor(s, warmup_steps, total_steps, decay, floor))
    return {"scheduler": sched, "interval": "step"}
