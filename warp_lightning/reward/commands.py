"""The record of `reward` (utils/commands.py): its check is in checks.py beside it."""

from __future__ import annotations

from warp_lightning.utils.commands import WHERE_AND_HOW_LOGGED, Command

REWARD = Command("reward", "train a Bradley-Terry reward model (or a WARM ensemble, weight-averaged) on preference "
                 "pairs", "warp_lightning.reward.training", "warp_lightning.reward.checks:check_reward", resume=WHERE_AND_HOW_LOGGED,
                 types={f"reward_training.{key}": (int, None) for key in ("max_train_texts", "max_val_texts",
                                                                          "max_eval_texts")})
COMMANDS = (REWARD,)
