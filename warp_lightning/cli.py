"""`python -m warp_lightning COMMAND [hydra overrides]`: one Hydra app per command.

Each command has its own primary config `conf/COMMAND.yaml` and a function `run(cfg) -> dict` that
returns the figures written to `<hydra.run.dir>/metrics.json`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

from warp_lightning import UserError

CONF_DIR = Path(os.environ.get("WARP_LIGHTNING_CONF", Path(__file__).resolve().parent.parent / "conf"))

# command -> (module with `run(cfg)`, one-line description)
COMMANDS = {
    "assets": ("warp_lightning.assets", "fetch the offline models and data of ASSETS.md into the cache"),
    "sft": ("warp_lightning.sft", "train the offline SFT policy (a small GPT-2) on movie reviews"),
    "reward": ("warp_lightning.reward", "train a Bradley-Terry reward model on preference pairs"),
    "train": ("warp_lightning.warp", "run WARP: RLOO with an EMA anchor, SLERP of M runs, LITI, I times"),
    "evaluate": ("warp_lightning.evaluate", "mean reward and KL to the SFT policy, with 95% intervals"),
}

log = logging.getLogger("warp_lightning")


def usage() -> str:
    lines = ["usage: python -m warp_lightning COMMAND [hydra overrides] [--cfg job] [-m]", "", "commands:"]
    lines += [f"  {name:<10}{desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "`python -m warp_lightning COMMAND --help` shows the command's Hydra config and options."]
    return "\n".join(lines)


def run_command(name: str, cfg) -> dict:
    """Run a command's `run(cfg)`, turning a UserError into one line on stderr and exit status 2."""
    from warp_lightning.io import write_metrics

    module = importlib.import_module(COMMANDS[name][0])
    try:
        metrics = module.run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if metrics is not None:
        write_metrics(Path(cfg_output_dir()) / "metrics.json", metrics)
    return metrics


def cfg_output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return
    name = argv[0]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)

    import hydra

    # Hydra reads sys.argv: drop the command word so it sees only overrides and its own flags.
    sys.argv = [f"{sys.argv[0]} {name}", *argv[1:]]

    @hydra.main(config_path=str(CONF_DIR), config_name=name, version_base="1.3")
    def _app(cfg):
        metrics = run_command(name, cfg)
        # A sweep optimises the first figure a command reports (Hydra's return value).
        return None if not metrics else next(iter(metrics.values()))

    _app()
