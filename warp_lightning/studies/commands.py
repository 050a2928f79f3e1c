"""The record of `study` (utils/commands.py): its check is in checks.py beside it."""

from __future__ import annotations

from warp_lightning.utils.commands import Command

COMMANDS = (
    Command("study", "a study's jobs (list, run the missing ones, one job, build their models ahead) and its report",
            "warp_lightning.studies.command", "warp_lightning.studies.checks:check_study",
            types={"job": (str, None),  # the one job to run, or null
                   "budget_minutes": (int, float, None),  # action=run: null is no budget
                   "readme": (str, None)}),  # action=report: null leaves the README untouched
)
