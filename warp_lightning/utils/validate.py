"""The config checks every command shares, run at start before anything is built, downloaded, started or
written: one line naming the key, the value and what is allowed (the CLI prints it after `error:` and exits
with status 2). Each command's own rules live beside the command, in the `checks.py` of its package
(`train/checks.py`: train, sft; `reward/checks.py`; `eval/checks.py`: evaluate, front, report;
`data/checks.py`: the data, the prompt lengths, assets), written with the helpers here.

`python -m warp_lightning COMMAND ...` runs them in `cli.check_overrides`, before Hydra starts (so not even
Hydra's run folder is created):

1. types (`check_override_types`): every value the user overrides must have the type of the value it replaces
   in the composed config (int where an int is, a number where a float is, ...). Why this and not structured
   configs registered in Hydra's ConfigStore: the YAML files under conf/ are the schema, so a key added to a
   YAML file is typed from its default at once, with no dataclass to keep in step. Only keys whose default
   says nothing (null, ???) or that take several types need a declared type: `SHARED_TYPES` below for the
   config groups every command shares, the command's record (utils/commands.py) for its own keys
   (tests/utils/test_validate.py checks that every such key of every config has one).
2. values, files and the machine (`validate_command`): a mandatory value left unset, the output folder, the
   accelerator and device count against this machine, then the command's own check (ranges and choices, the
   files and folders it reads, whether the folders it writes to can be created).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from warp_lightning import UserError


def check(ok: bool, key: str, value, allowed: str) -> None:
    """`key=value is invalid: allowed` unless `ok`."""
    if not ok:
        raise UserError(f"{key}={value!r} is invalid: {allowed}")


def one_of(names: Sequence[str]) -> str:
    """The choices of a key in the words of its error line: `a, b or c`."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


# --- types --------------------------------------------------------------------------------------------------

# The accepted types of the keys of the config groups every command shares whose default is null or ??? (nothing
# to infer a type from) or that take several types: python types, None (null allowed) or literal strings. A
# command's own such keys are declared in its record (utils/commands.py `Command.types`, beside the command).
SHARED_TYPES: dict[str, tuple] = {
    "trainer.devices": (int, list, "auto"),
    "trainer.precision": (str, int),
    "trainer.enable_progress_bar": (bool, None),
    "trainer.process_group_backend": (str, None),
    "policy.build": (str, None),
    "policy.lora.target_modules": (str, list),  # all-linear, or a list of module names
    "reward_model.build": (str, None),
    "reward_model.label": (int, str),  # a classifier's scored label: an index or a name of its id2label
    "reward_model.train_data_path": (str, None),
    "data.path": (str, None),  # data=file needs it (???); data=imdb: a local copy, null for the hub
    "data.subset": (str, None),  # data=prompts: load_dataset's configuration
    "data.splits": (dict, None),  # data=prompts: {train: NAME, validation: NAME, test: NAME}
    "data.split_by": (str, None),  # data=prompts: the column whose rows stay in one split
}

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list [...]",
          dict: "a mapping {...}", None: "null"}


def _matches(value, kind) -> bool:
    if kind is None:
        return value is None
    if isinstance(kind, str):
        return value == kind
    if kind is int:
        return is_int(value)
    if kind is float:
        return is_number(value)
    if kind is str:  # a number where a string is expected reads as that string (e.g. experiment_name=2024)
        return isinstance(value, str) or is_number(value)
    if kind is list:
        return isinstance(value, list | tuple)
    return isinstance(value, kind)


def _describe(kinds: Iterable) -> str:
    return one_of([repr(k) if isinstance(k, str) else _NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds])


def _default_kinds(value) -> tuple:
    if isinstance(value, bool):
        return (bool,)
    if is_int(value):
        return (int,)
    if isinstance(value, float):
        return (float,)
    if isinstance(value, str):
        return (str,)
    if isinstance(value, list | tuple):
        return (list,)
    if isinstance(value, dict):
        return (dict,)
    return ()


def check_value_type(key: str, value, default, has_default: bool = True, declared: dict | None = None) -> None:
    """Raise UserError if `value` (a parsed override) does not have the type of `default` (or the declared
    type of `key` in `declared`, by default `SHARED_TYPES`). `has_default=False`: the key has no default value
    (null, ???, or a key added with +)."""
    declared = SHARED_TYPES if declared is None else declared
    if isinstance(value, str) and "${" in value:
        return  # an interpolation: its target is checked where it is set
    kinds = declared.get(key) or (_default_kinds(default) if has_default and default is not None else ())
    if not kinds:
        return  # nothing known about this key (e.g. added with +key=...)
    if not any(_matches(value, k) for k in kinds):
        like = f", like its default {default!r}" if has_default and default is not None else ""
        raise UserError(f"{key}={value!r} is invalid: must be {_describe(kinds)}{like}")
    # the elements of a list whose default has elements of one type: that type
    if isinstance(value, list | tuple) and isinstance(default, list | tuple) and default and key not in declared:
        element = _default_kinds(default[0])
        if element and all(any(_matches(d, k) for k in element) for d in default):
            for item in value:
                if not any(_matches(item, k) for k in element):
                    raise UserError(f"{key}={list(value)!r} is invalid: every element must be {_describe(element)}, "
                                    f"like its default {list(default)!r}")


def default_of(cfg, key: str) -> tuple[bool, object]:
    """(whether `key` has a value in `cfg` that is not null or ???, that value as plain python)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent or OmegaConf.is_missing(parent, leaf):
        return False, None
    try:
        value = plain(parent[leaf])
    except Exception:  # an interpolation that does not resolve here (e.g. ${hydra:...})
        return False, None
    return value is not None, value


def check_override_types(overrides: list[tuple[str, list]], base, declared: dict) -> None:
    """`overrides`: (key, the values it takes: one, or each value of a sweep); `base`: the command's config
    composed without these value overrides (with the user's config-group choices); `declared`: the command's
    declared types (`Command.declared_types`)."""
    for key, values in overrides:
        has_default, default = default_of(base, key)
        for value in values:
            check_value_type(key, value, default, has_default, declared)


def check_missing(cfg) -> None:
    """A mandatory value (???) left unset: one line naming it."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        raise UserError(f"{key} is missing: pass {key}=..." + _MISSING_HINTS.get(key, ""))


_MISSING_HINTS = {"data.path": " (a .csv with a `text` column, a .jsonl or a text file, one text per line)",
                  "model": " (a Hugging Face folder, e.g. a train run's final/)", "run": " (a train run folder)"}


# --- values, files, machine ---------------------------------------------------------------------------------

def int_at_least(section, prefix: str, keys: Iterable[str], minimum: int, nullable: Iterable[str] = ()) -> None:
    """Each of `keys` present in `section` is an integer >= `minimum`, or null for those in `nullable`."""
    for key in keys:
        if key in section:
            value = section[key]
            if value is None and key in nullable:
                continue
            check(is_int(value) and value >= minimum, f"{prefix}.{key}", value, f"must be an integer >= {minimum}")


def positive(section, prefix: str, keys: Iterable[str]) -> None:
    """Each of `keys` present in `section` is a number > 0."""
    for key in keys:
        if key in section:
            value = section[key]
            check(is_number(value) and value > 0, f"{prefix}.{key}", value, "must be a number > 0")


def check_min_new_tokens(block, name: str) -> None:
    """`{name}.min_new_tokens` (absent: 0) is an integer between 0 and `{name}.max_new_tokens`."""
    value, top = block.get("min_new_tokens", 0), block.get("max_new_tokens")
    check(isinstance(value, int) and 0 <= value and (not isinstance(top, int) or value <= top),
          f"{name}.min_new_tokens", value, f"must be an integer between 0 and {name}.max_new_tokens={top}")


def validate_one_process(cfg, command: str) -> None:
    """Commands that compute in one process (sft, reward, evaluate, front) ignore devices and strategies:
    a value that asks for several is refused rather than silently dropped."""
    t = cfg.trainer
    for key, one in (("devices", 1), ("num_nodes", 1), ("strategy", "auto")):
        value = t.get(key, one)
        check(value == one or (key == "devices" and isinstance(value, ListConfig | list) and len(value) == 1),
              f"trainer.{key}", value, f"{command} computes in one process: leave it at {one} (only train runs "
              "several processes)")


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# any of these in the environment: a launcher or cluster that starts (or lets Lightning find) the other nodes
CLUSTER_ENV = ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "GROUP_RANK", "NODE_RANK", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE",
               "PMI_SIZE", "WORLD_SIZE")


def validate_machine(cfg) -> None:
    """The accelerator and device count against this machine (torch is imported only when a GPU is asked for
    or several devices might be GPUs), and several nodes only under a cluster launcher."""
    t = cfg.trainer
    accelerator = str(t.get("accelerator", "auto"))
    check(accelerator in ACCELERATORS, "trainer.accelerator", accelerator, "choose auto, cpu, gpu (cuda) or mps")
    devices = plain(t.get("devices", 1))
    several = devices == "auto" or devices == -1 or (is_int(devices) and devices > 1) or isinstance(devices, list)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and several):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if accelerator != "auto":
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            check(count > 0, "trainer.accelerator", accelerator,
                  f"no CUDA GPU is visible on this machine (torch {torch.__version__}"
                  + (f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "")
                  + "): use trainer.accelerator=cpu (or auto)")
        if count:
            if is_int(devices):
                check(devices <= count, "trainer.devices", devices, f"only {count} GPU(s) are visible on this machine")
            elif isinstance(devices, list):
                bad = [d for d in devices if not is_int(d) or not 0 <= d < count]
                check(not bad, "trainer.devices", devices, f"GPU indices go from 0 to {count - 1} on this machine")
    elif accelerator == "mps":
        import torch

        check(torch.backends.mps.is_available(), "trainer.accelerator", accelerator,
              "no Apple GPU (MPS) is available here: use trainer.accelerator=cpu (or auto)")
    nodes = t.get("num_nodes", 1)
    if is_int(nodes) and nodes > 1:
        check(any(v in os.environ for v in CLUSTER_ENV), "trainer.num_nodes", nodes,
              "several nodes need a launcher that starts a process on each (srun under SLURM, torchrun), or "
              "NODE_RANK, MASTER_ADDR and MASTER_PORT set on each node; none is set here, so the processes "
              "would wait for the other nodes forever")


def looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


BUILDS = ("sft", "reward", "smollm2")


def models_to_build(cfg, keys=("policy", "reward_model")) -> list[str]:
    """The model keys whose folder is missing and will be built on first use."""
    return [k for k in keys if k in cfg and cfg[k].get("build")
            and not Path(str(cfg[k].name_or_path)).expanduser().exists()]


def validate_model_paths(cfg, keys=("policy", "reward_model")) -> None:
    """A local model folder must exist unless the project can build it (`build: sft|reward|smollm2`)."""
    for key in keys:
        if key not in cfg:
            continue
        build = cfg[key].get("build")
        check(build is None or build in BUILDS, f"{key}.build", build, f"choose {', '.join(BUILDS)} or null")
        name = str(cfg[key].name_or_path)
        if looks_local(name) and not Path(name).expanduser().exists() and not build:
            raise UserError(f"{key}.name_or_path={name!r} does not exist: point it to a Hugging Face folder "
                            "or a hub name")
        overrides = cfg[key].get("build_overrides", [])
        check(isinstance(overrides, ListConfig | list) and all(isinstance(o, str) for o in overrides),
              f"{key}.build_overrides", plain(overrides), "must be a list of overrides of the build command, "
              "e.g. [sft.max_steps=100]")
    if models_to_build(cfg, keys):
        writable(str(cfg.paths.models_dir), "paths.models_dir", "the models built on first use are saved there")


def validate_models(models: dict, paths) -> None:
    """`validate_model_paths` for {config key: model config}, e.g. the policy and each classifier of a reward
    (a sum's terms are `reward_model.terms.NAME`)."""
    cfg = OmegaConf.create({**{k: OmegaConf.to_container(v, resolve=True) for k, v in models.items()},
                            "paths": OmegaConf.to_container(paths, resolve=True)})
    validate_model_paths(cfg, tuple(models))


def writable(path: str, key: str, why: str) -> None:
    """`path` is a folder we may write in, or can be created: its nearest existing ancestor is a writable folder."""
    if "${" in path:
        return
    p = Path(path).expanduser().absolute()
    if p.exists():
        check(p.is_dir(), key, path, f"is not a folder ({why})")
    ancestor = p
    while not ancestor.exists():
        ancestor = ancestor.parent
    check(ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK), key, path,
          f"cannot be written: {ancestor} is not a writable folder ({why})")


def check_folder(value, key: str, needs: str | None, what: str, missing: str | None = None) -> None:
    """`value` is a folder (holding `needs`); `missing`: the message when it does not hold it."""
    path = Path(str(value)).expanduser()
    check(path.is_dir(), key, str(value), f"no such folder: pass {what}")
    if needs and not (path / needs).exists():
        raise UserError(missing or f"{key}={str(value)!r} is invalid: has no {needs}: pass {what}")


def validate_command(cfg, command_check: Callable, run_dir: str | None = None) -> None:
    """The checks every command shares (a mandatory value left unset, the output folder, the accelerator and
    devices), then `command_check(cfg)`, the command's own (the `check_COMMAND` of its package's checks.py).

    `run_dir`: `hydra.run.dir` when given.
    """
    check_missing(cfg)
    if run_dir is not None or "paths" in cfg:
        writable(run_dir or str(cfg.paths.output_dir), "hydra.run.dir" if run_dir else "paths.output_dir",
                 "the command's outputs go there")
    if "trainer" in cfg:
        validate_machine(cfg)
    command_check(cfg)


def check_prompt_lengths(min_tokens, max_tokens) -> None:
    """`data.min_prompt_tokens` and `data.max_prompt_tokens`: integers, 1 <= min <= max."""
    for key, value in (("min_prompt_tokens", min_tokens), ("max_prompt_tokens", max_tokens)):
        check(is_int(value), f"data.{key}", value, "must be an integer")
    check(1 <= min_tokens <= max_tokens, "data.min_prompt_tokens", min_tokens,
          f"must be between 1 and data.max_prompt_tokens={max_tokens}")
