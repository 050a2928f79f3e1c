"""The check of `reward` (the Bradley-Terry training of `reward/training.py`), run once before it starts (its record:
commands.py)."""

from __future__ import annotations

from pathlib import Path

from warp_lightning.data.assets import ASSETS
from warp_lightning.data.checks import check_text_sets
from warp_lightning.utils.validate import (
    check,
    int_at_least,
    is_int,
    is_number,
    looks_local,
    plain,
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
    check_warm(r)
    check_text_sets(cfg.reward_model.train_data, "reward_model.train_data")
    check_text_sets(r.eval_sets, "reward_training.eval_sets")
    base = str(cfg.reward_model.base)
    check(base in ASSETS or not looks_local(base) or Path(base).expanduser().exists(), "reward_model.base",
          base, f"does not exist: an asset name ({', '.join(ASSETS)}), a local folder or a hub name")
    writable(str(Path(str(cfg.save_to)).parent), "save_to", "the trained reward model is saved there")


def check_warm(r) -> None:
    """The WARM keys of reward_training (reward/warm.py)."""
    int_at_least(r, "reward_training", ("ensemble",), 1)
    probe = r.get("probe_steps", 0)
    check((is_int(probe) and probe >= 0) or (isinstance(probe, float) and 0 <= probe <= 1),
          "reward_training.probe_steps", probe, "must be an integer >= 0 (steps) or a float in [0, 1] (a fraction "
          "of the fine-tuning steps)")
    positive(r, "reward_training", ("probe_lr",))
    lists = {"ensemble_lrs": (lambda v: v > 0, "> 0"), "ensemble_dropouts": (lambda v: 0 <= v < 1, "in [0, 1)")}
    for key, (ok, allowed) in lists.items():
        values = plain(r.get(key, []))
        check(isinstance(values, list) and all(is_number(v) and ok(v) for v in values), f"reward_training.{key}",
              values, f"must be a list of numbers {allowed} ([]: none)")
    noise, noise_check = r.get("label_noise", 0.0), r.get("noise_check", 0.0)
    check(is_number(noise) and 0 <= noise < 0.5, "reward_training.label_noise", noise,
          "must be a fraction in [0, 0.5) of the training pairs to flip")
    check(is_number(noise_check) and 0 <= noise_check < 0.5, "reward_training.noise_check", noise_check,
          "must be a fraction in [0, 0.5) of the training pairs to flip (0: no check; the paper: 0.25)")
    check(r.get("ensemble", 1) > 1 or not (noise or noise_check), "reward_training.ensemble",
          r.get("ensemble", 1), "must be >= 2 with label_noise or noise_check (WARM's ensemble; each member is a "
          "single model)")
