"""The checks of `reward` (the Bradley-Terry training of `reward/training.py`), before it starts
(utils/validate.py runs them)."""

from __future__ import annotations

from pathlib import Path

from warp_lightning.data.assets import ASSETS
from warp_lightning.data.checks import check_text_sets
from warp_lightning.utils.validate import (
    check,
    int_at_least,
    is_int,
    looks_local,
    positive,
    validate_one_process,
    writable,
)


def check_reward(cfg) -> None:
    """reward_training.*, the text sets it trains and evaluates on, the base model and where it is saved."""
    validate_one_process(cfg, "reward")
    r = cfg.reward_training
    int_at_least(r, "reward_training", ("batch_size", "epochs", "max_length", "eval_max_length"), 1)
    int_at_least(r, "reward_training", ("warmup_steps", "log_every"), 0)
    check(r.max_steps == -1 or (is_int(r.max_steps) and r.max_steps >= 1), "reward_training.max_steps",
          r.max_steps, "must be -1 (one pass of `epochs`) or an integer >= 1")
    for key in ("max_train_texts", "max_val_texts", "max_eval_texts"):
        value = r.get(key)
        check(value is None or (is_int(value) and value >= 2), f"reward_training.{key}", value,
              "must be null or an integer >= 2")
    positive(r, "reward_training", ("lr",))
    check_text_sets(cfg.reward_model.train_data, "reward_model.train_data")
    check_text_sets(r.eval_sets, "reward_training.eval_sets")
    base = str(cfg.reward_model.base)
    check(base in ASSETS or not looks_local(base) or Path(base).expanduser().exists(), "reward_model.base",
          base, f"does not exist: an asset name ({', '.join(ASSETS)}), a local folder or a hub name")
    writable(str(Path(str(cfg.save_to)).parent), "save_to", "the trained reward model is saved there")
