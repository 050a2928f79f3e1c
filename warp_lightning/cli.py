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
from warp_lightning.utils.console import quiet_third_party
from warp_lightning.utils.io import write_metrics
from warp_lightning.utils.paths import cfg_output_dir

CONF_DIR = Path(os.environ.get("WARP_LIGHTNING_CONF", Path(__file__).resolve().parent.parent / "conf"))

# command -> (module with `run(cfg)`, one-line description)
COMMANDS = {
    "assets": ("warp_lightning.data.assets", "fetch the offline models and data of ASSETS.md into the cache"),
    "sft": ("warp_lightning.train.sft", "train the offline SFT policy (a small GPT-2) on movie reviews"),
    "reward": ("warp_lightning.reward.training", "train a Bradley-Terry reward model on preference pairs"),
    "train": ("warp_lightning.train.loop", "run WARP: RLOO with an EMA anchor, SLERP of M runs, LITI, I times"),
    "evaluate": ("warp_lightning.eval.evaluate", "mean reward and KL to the SFT policy, with 95% intervals"),
    "front": ("warp_lightning.eval.front", "reward vs KL fronts of a run (LITI over eta) and of baselines"),
    "report": ("warp_lightning.eval.report", "tables, plots and the paper's claims from the experiments, in reports/"),
}

log = logging.getLogger("warp_lightning")
COMMAND_ENV = "WARP_LIGHTNING_COMMAND"


def usage() -> str:
    lines = ["usage: python -m warp_lightning COMMAND [hydra overrides] [--cfg job] [-m]", "", "commands:"]
    lines += [f"  {name:<10}{desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "`python -m warp_lightning COMMAND --help` shows the command's Hydra config and options."]
    return "\n".join(lines)


def run_command(name: str, cfg) -> dict:
    """Run a command's `run(cfg)`, turning a UserError into one line on stderr and exit status 2."""
    module = importlib.import_module(COMMANDS[name][0])
    quiet_third_party()  # after the imports: Lightning adds its own console handler when it is imported
    try:
        metrics = module.run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    if metrics is not None:
        write_metrics(Path(cfg_output_dir()) / "metrics.json", metrics)
    return metrics


def check_overrides(name: str, args: list[str]) -> None:
    """Compose the command's config with the overrides once, up front, so that a typo is one line.

    Hydra itself would print several lines and exit with status 1; a sweep (`a=1,2`) is checked with its
    first value.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, MissingConfigException

    overrides = [a for a in args if "=" in a and not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise UserError(f"cannot parse the overrides {' '.join(overrides)}: {_one_line(err)}") from None
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps and not {"-m", "--multirun"} & set(args) and not any("hparams_search=" in a for a in args):
        raise UserError(f"{sweeps[0]} is a sweep: add -m (--multirun) to run one job per value")
    plain = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
             else o.input_line for o in parsed]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(name, overrides=plain)
    except MissingConfigException as err:
        group = next((o for o in parsed if f"'{o.key_or_group}/" in str(err)), None)
        options = sorted(err.options or [])
        what = group.input_line if group else _one_line(err)
        raise UserError(f"{what}: no such config; choose one of {', '.join(options)}" if options else
                        f"{what}: no such config ({_one_line(err)})") from None
    except HydraException as err:
        text = str(err) + " " + str(err.__cause__ or "")
        key = next((o.key_or_group for o in parsed if f"'{o.key_or_group}'" in text), None)
        if key and "not in struct" in text:
            raise UserError(f"{key} is not a key of the {name} config: check its spelling (`python -m "
                            f"warp_lightning {name} --cfg job` prints them all) or add it with +{key}=...") from None
        raise UserError(_one_line(err)) from None


def _one_line(err: Exception) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return
    if argv[0] not in COMMANDS and os.environ.get("LOCAL_RANK") and os.environ.get(COMMAND_ENV) in COMMANDS:
        argv = [os.environ[COMMAND_ENV], *argv]  # a process started by Lightning's DDP launcher
    name = argv[0]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)

    import hydra

    try:
        check_overrides(name, argv[1:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)

    os.environ[COMMAND_ENV] = name  # Lightning's launcher re-runs `python -m warp_lightning` + overrides
    # Hydra reads sys.argv: drop the command word so it sees only overrides and its own flags.
    sys.argv = [f"{sys.argv[0]} {name}", *argv[1:]]

    @hydra.main(config_path=str(CONF_DIR), config_name=name, version_base="1.3")
    def _app(cfg):
        metrics = run_command(name, cfg)
        # A sweep optimises the first figure a command reports (Hydra's return value).
        return None if not metrics else next(iter(metrics.values()))

    _app()
