"""The record of `assets` (utils/commands.py): its check is in checks.py beside it."""

from __future__ import annotations

from warp_lightning.utils.commands import Command

COMMANDS = (
    Command("assets", "fetch the offline models and data of ASSETS.md into the cache", "warp_lightning.data.assets",
            "warp_lightning.data.checks:check_assets"),
)
