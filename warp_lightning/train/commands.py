"""The records of `sft` and `train` (utils/commands.py): their checks are in checks.py beside them."""

from __future__ import annotations

from warp_lightning.utils.commands import WHERE_AND_HOW_LOGGED, Command

SFT = Command("sft", "train the offline SFT policy (a small GPT-2) on movie reviews", "warp_lightning.train.sft",
              "warp_lightning.train.checks:check_sft", resume=WHERE_AND_HOW_LOGGED,
              types={"sft.init": (dict, None),  # a pretrained model {name_or_path, build} to adapt, or null: scratch
                     "sft.init.build": (str, None)})
TRAIN = Command("train", "run WARP: RLOO with an EMA anchor, SLERP of M runs, LITI, I times",
                "warp_lightning.train.loop", "warp_lightning.train.checks:check_train",
                resume=WHERE_AND_HOW_LOGGED | {"warp.checkpoint_every"},  # the checkpoint cadence too
                types={"warp.grad_clip": (float, None)})
COMMANDS = (SFT, TRAIN)
