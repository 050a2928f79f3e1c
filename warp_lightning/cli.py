"""`python -m warp_lightning COMMAND [hydra overrides]`: one Hydra app per command.

Each command is declared once, by its record beside it (utils/commands.py `Command`, in its package's checks.py):
its primary config `conf/COMMAND.yaml`, its check (run here once, before Hydra starts), its `run(cfg) -> dict`
(the figures written to `<hydra.run.dir>/metrics.json`) and what a resume may change.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from warp_lightning import Preempted, UserError
from warp_lightning.data.hub import check_hub
from warp_lightning.runtime import lock, signals
from warp_lightning.utils.commands import Command, commands
from warp_lightning.utils.console import figures_line, quiet_third_party
from warp_lightning.utils.io import write_metrics
from warp_lightning.utils.paths import cfg_output_dir
from warp_lightning.utils.validate import check_override_types

CONF_DIR = Path(os.environ.get("WARP_LIGHTNING_CONF", Path(__file__).resolve().parent.parent / "conf"))

log = logging.getLogger("warp_lightning")
COMMAND_ENV = "WARP_LIGHTNING_COMMAND"


def usage() -> str:
    lines = ["usage: python -m warp_lightning COMMAND [hydra overrides] [--cfg job] [-m]", "", "commands:"]
    lines += [f"  {name:<10}{record.summary}" for name, record in commands().items()]
    lines += ["", "`python -m warp_lightning COMMAND --help` shows the command's Hydra config and options."]
    return "\n".join(lines)


def run_command(record: Command, cfg) -> dict:
    """Run a command's body (checked already), turning a UserError into one line on stderr and exit status 2 (3
    for a non-finite value), and a stop signal into one line saying how to resume and exit status 143 or 130."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        module = record.body()
        quiet_third_party()  # after the imports: Lightning adds its own console handler when it is imported
        if record.resumable and HydraConfig.get().mode == RunMode.MULTIRUN:
            lock.claim_run_dir(cfg_output_dir())  # a job's folder, once the launcher made it (see `main`)
        metrics = module.run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Preempted as err:
        stopped(record, err, cfg_output_dir())
    if metrics is not None:
        out = Path(cfg_output_dir())
        write_metrics(out / "metrics.json", metrics)
        tell = getattr(module, "result_lines", None)  # a command's own account of its result, else its figures
        print(tell(metrics, out) if tell else figures_line(record.name, metrics, out), flush=True)
    return metrics


def stopped(record: Command, err: Preempted, out_dir: str | None = None) -> None:
    """One line on stderr saying what stopped and how to resume; exit 128 + the signal. Not in a process started
    by another command (a build, a DDP process), whose parent says it."""
    if not signals.is_tied() and int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0:
        args = [a for a in sys.argv[1:] if not a.startswith("hydra.run.dir=")]
        if record.resumable and out_dir and not {"-m", "--multirun"} & set(args):
            command = shlex.join(["python", "-m", "warp_lightning", record.name, *args, f"hydra.run.dir={out_dir}"])
            print(f"{err.describe()}: resume with {command}", file=sys.stderr, flush=True)
        else:
            print(f"{err.describe()}: run the same command again"
                  + (" with the same hydra.sweep.dir to resume (finished jobs are skipped)" if record.resumable
                     else " to start it over"), file=sys.stderr, flush=True)
    sys.exit(err.exit_code)


def _compose(name: str, overrides: list[str], parsed, with_hydra: bool = False):
    """The command's config with `overrides` (`with_hydra`: and Hydra's own node), Hydra's errors turned into one
    line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(name, overrides=overrides, return_hydra_config=with_hydra)
    except MissingConfigException as err:
        group = next((o for o in parsed if f"'{o.key_or_group}/" in str(err)), None)
        options = sorted(err.options or [])
        what = group.input_line if group else _one_line(err)
        raise UserError(f"{what}: no such config; choose one of {', '.join(options)}" if options else
                        f"{what}: no such config ({_one_line(err)})") from None
    except HydraException as err:
        text = str(err) + " " + str(err.__cause__ or "")
        given = next((o for o in parsed if f"'{o.key_or_group}'" in text), None)
        if given and "not in struct" in text:
            key = given.key_or_group
            # a mapping given to a key that exists (`warp.merge_options={density: 0.2}`): the new key is inside it
            inner = next((w for w in text.split() if w.startswith(f"{key}.")), None)
            add = f"+{given.input_line}" if inner else f"+{key}=..."
            raise UserError(f"{inner or key} is not a key of the {name} config: check its spelling (`python -m "
                            f"warp_lightning {name} --cfg job` prints them all) or add it with {add}") from None
        raise UserError(_one_line(err)) from None


def _values(override) -> list:
    """The values an override sets: one, or each value of a sweep (`a=1,2`, `range(...)`)."""
    if not override.is_sweep_override():
        return [override.value()]
    try:
        return list(override.sweep_iterator())
    except Exception:  # an interval sweep (optimizers): no list of values
        return []


def check_overrides(record: Command, args: list[str]) -> str | None:
    """Everything that can be checked before the command starts, up front, each failure one line (UserError):
    the overrides parse, the config composes (no unknown key or config), each overridden value has the type
    of the value it replaces (utils/validate.py says why this rather than structured configs), and the
    composed config passes `validate_command` (values, files, the machine) and `check_hub` (what it needs from
    the Hugging Face hub is cached or the hub answers). A sweep (`a=1,2`) is composed
    with its first value and type-checked with all of them.

    Hydra itself would print several lines and exit with status 1, after creating the run folder.

    Returns the run folder of a single run of a resumable command, `hydra.run.dir` as given or as Hydra would
    name it (None otherwise): `main` holds it before Hydra writes in it and passes it to Hydra.
    """
    name = record.name
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

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
    full = _compose(name, plain, parsed)
    # config-group choices (trainer=ddp, +experiment=smoke) shape the config: the types of the values that the
    # other overrides replace are read from the config composed with the choices alone
    groups = [line for o, line in zip(parsed, plain, strict=True) if (CONF_DIR / o.key_or_group).is_dir()]
    values = [o for o in parsed if not (CONF_DIR / o.key_or_group).is_dir() and not o.is_delete()]
    try:
        base = _compose(name, groups, parsed) if len(groups) < len(parsed) else full
        check_override_types([(o.key_or_group, [_plain(full, o.key_or_group)] if not o.is_sweep_override()
                                else _values(o)) for o in values], base, record.declared_types())
        run_dir = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
        single = record.resumable and not any(a.startswith("-") for a in args)  # not -m, --cfg, --help, ...
        if single and (run_dir is None or "${" in run_dir):  # the folder Hydra would make, named now
            hydra_dir = _compose(name, [*plain, *(a for a in args if a.startswith("hydra.run.dir="))], parsed,
                                 with_hydra=True)
            run_dir = str(hydra_dir.hydra.run.dir)
        record.validate(full, run_dir)
        if not {"--cfg", "-c", "--info", "-i", "--help", "-h"} & set(args):  # printing the config needs no hub
            check_hub(name, full)  # a hub name neither cached nor reachable: one line now, not retries in a build
    except OmegaConfBaseException as err:  # e.g. an interpolation that does not resolve
        raise UserError(_one_line(err)) from None
    return run_dir if single else None


def _plain(cfg, key: str):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def _one_line(err: Exception) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return
    known = commands()
    if argv[0] not in known and os.environ.get("LOCAL_RANK") and os.environ.get(COMMAND_ENV) in known:
        argv = [os.environ[COMMAND_ENV], *argv]  # a process started by Lightning's DDP launcher
    name = argv[0]
    if name not in known:
        print(f"error: unknown command {name!r}; choose one of {', '.join(known)}", file=sys.stderr)
        sys.exit(2)
    record = known[name]

    import hydra

    signals.install()  # SIGTERM, SIGINT: a clean stop (runtime/signals.py)
    try:
        signals.tie_to_parent()  # a child of another command (a build, a DDP process) dies with it
        run_dir = check_overrides(record, argv[1:])
        if run_dir is not None:  # a single run of a resumable command: its folder held before Hydra writes in it
            lock.claim_run_dir(run_dir)  # (one command at a time in a run folder); a multirun job's: run_command
            argv = [name, *(a for a in argv[1:] if not a.startswith("hydra.run.dir=")), f"hydra.run.dir={run_dir}"]
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Preempted as err:
        stopped(record, err)

    os.environ[COMMAND_ENV] = name  # Lightning's launcher re-runs `python -m warp_lightning` + overrides
    # Hydra reads sys.argv: drop the command word so it sees only overrides and its own flags.
    sys.argv = [f"{sys.argv[0]} {name}", *argv[1:]]

    @hydra.main(config_path=str(CONF_DIR), config_name=name, version_base="1.3")
    def _app(cfg):
        metrics = run_command(record, cfg)
        # A sweep optimises the first figure a command reports (Hydra's return value).
        return None if not metrics else next(iter(metrics.values()))

    try:
        _app()
    except Preempted as err:  # a signal while Hydra sets the job up, before or after `run_command`
        stopped(record, err)
