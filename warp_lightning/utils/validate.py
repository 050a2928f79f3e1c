"""Config checks at start, before anything is built, downloaded, started or written: one line naming the key,
the value and what is allowed (the CLI prints it after `error:` and exits with status 2).

`python -m warp_lightning COMMAND ...` runs them in `cli.check_overrides`, before Hydra starts (so not even
Hydra's run folder is created):

1. types (`check_override_types`): every value the user overrides must have the type of the value it replaces
   in the composed config (int where an int is, a number where a float is, ...). Why this and not structured
   configs registered in Hydra's ConfigStore: the YAML files under conf/ are the schema, so a key added to a
   YAML file is typed from its default at once, with no dataclass to keep in step. Only keys whose default
   says nothing (null, ???) or that take several types need an entry in `DECLARED_TYPES`
   (tests/cli/test_validate.py checks that every such key of every config has one).
2. values, files and the machine (`validate_command`): ranges and choices, the files and folders a command
   reads (data files, model folders, run folders), whether the folders it writes to can be created, the
   accelerator and device count against this machine, the strategy against devices and nodes.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from warp_lightning import UserError


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r} is invalid: {allowed}")


# --- types --------------------------------------------------------------------------------------------------

# The accepted types of keys whose default is null or ??? (nothing to infer a type from) or that take several
# types: python types, None (null allowed) or literal strings.
DECLARED_TYPES: dict[str, tuple] = {
    "trainer.devices": (int, list, "auto"),
    "trainer.precision": (str, int),
    "trainer.enable_progress_bar": (bool, None),
    "trainer.process_group_backend": (str, None),
    "warp.grad_clip": (float, None),
    "policy.build": (str, None),
    "sft.init.build": (str, None),
    "sft.init": (dict, None),  # a pretrained model {name_or_path, build} to adapt, or null: GPT-2 from scratch
    "policy.lora.target_modules": (str, list),  # all-linear, or a list of module names
    "reward_model.build": (str, None),
    "data.path": (str, None),  # data=file needs it (???); data=imdb: a local copy, null for the hub
    "reward_model.train_data_path": (str, None),
    "eval.prompts": (int, None),  # evaluate (main's eval-work): null is the whole split
    "reward_training.max_train_texts": (int, None),
    "reward_training.max_val_texts": (int, None),
    "reward_training.max_eval_texts": (int, None),
    "model": (str, list, dict, None),  # evaluate: a folder, a list of them or {name: folder}; front: unused
    "run": (str, list, None),  # front: a train run folder or a list of them (seeds of one arm); report: a folder
    "baselines": (dict, None),  # front: {name: a run folder or a list of them}
    "evaluation": (str, None),  # report
    "sweep": (str, None),
    "front": (str, None),
}

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list [...]",
          dict: "a mapping {...}", None: "null"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _matches(value, kind) -> bool:
    if kind is None:
        return value is None
    if isinstance(kind, str):
        return value == kind
    if kind is int:
        return _is_int(value)
    if kind is float:
        return _is_number(value)
    if kind is str:  # a number where a string is expected reads as that string (e.g. experiment_name=2024)
        return isinstance(value, str) or _is_number(value)
    if kind is list:
        return isinstance(value, list | tuple)
    return isinstance(value, kind)


def _describe(kinds: Iterable) -> str:
    words = [repr(k) if isinstance(k, str) else _NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def _default_kinds(value) -> tuple:
    if isinstance(value, bool):
        return (bool,)
    if _is_int(value):
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


def check_value_type(key: str, value, default, has_default: bool = True) -> None:
    """Raise UserError if `value` (a parsed override) does not have the type of `default` (or the declared
    type of `key`). `has_default=False`: the key has no default value (null, ???, or a key added with +)."""
    if isinstance(value, str) and "${" in value:
        return  # an interpolation: its target is checked where it is set
    kinds = DECLARED_TYPES.get(key) or (_default_kinds(default) if has_default and default is not None else ())
    if not kinds:
        return  # nothing known about this key (e.g. added with +key=...)
    if not any(_matches(value, k) for k in kinds):
        like = f", like its default {default!r}" if has_default and default is not None else ""
        raise UserError(f"{key}={value!r} is invalid: must be {_describe(kinds)}{like}")
    # the elements of a list whose default has elements of one type: that type
    if isinstance(value, list | tuple) and isinstance(default, list | tuple) and default and key not in DECLARED_TYPES:
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
        value = _plain(parent[leaf])
    except Exception:  # an interpolation that does not resolve here (e.g. ${hydra:...})
        return False, None
    return value is not None, value


def check_override_types(overrides: list[tuple[str, list]], base) -> None:
    """`overrides`: (key, the values it takes: one, or each value of a sweep); `base`: the command's config
    composed without these value overrides (with the user's config-group choices)."""
    for key, values in overrides:
        has_default, default = default_of(base, key)
        for value in values:
            check_value_type(key, value, default, has_default)


def check_missing(cfg) -> None:
    """A mandatory value (???) left unset: one line naming it."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        raise UserError(f"{key} is missing: pass {key}=..." + _MISSING_HINTS.get(key, ""))


_MISSING_HINTS = {"data.path": " (a .csv with a `text` column, a .jsonl or a text file, one text per line)",
                  "model": " (a Hugging Face folder, e.g. a train run's final/)", "run": " (a train run folder)"}


# --- values, files, machine ---------------------------------------------------------------------------------

def _int_at_least(section, prefix: str, keys: Iterable[str], minimum: int) -> None:
    """Each of `keys` present in `section` is an integer >= `minimum`, or null where DECLARED_TYPES allows it."""
    for key in keys:
        if key in section:
            value = section[key]
            if value is None and None in DECLARED_TYPES.get(f"{prefix}.{key}", ()):
                continue
            _check(_is_int(value) and value >= minimum, f"{prefix}.{key}", value, f"must be an integer >= {minimum}")


def _positive(section, prefix: str, keys: Iterable[str]) -> None:
    for key in keys:
        if key in section:
            value = section[key]
            _check(_is_number(value) and value > 0, f"{prefix}.{key}", value, "must be a number > 0")


def validate_train_config(cfg) -> None:
    w = cfg.warp
    _int_at_least(w, "warp", ("iterations", "runs", "steps", "prompts_per_step", "max_new_tokens"), 1)
    _check(_is_int(w.samples_per_prompt) and w.samples_per_prompt >= 2, "warp.samples_per_prompt",
           w.samples_per_prompt, "must be an integer >= 2 (RLOO needs a baseline)")
    for key in ("slerp_lambda", "liti_eta", "ema_rate"):
        _check(_is_number(w[key]) and 0.0 <= w[key] <= 1.0, f"warp.{key}", w[key], "must be in [0, 1]")
    _check(_is_number(w.kl_coef) and w.kl_coef >= 0, "warp.kl_coef", w.kl_coef, "must be >= 0")
    _positive(w, "warp", ("temperature", "lr"))
    check_min_new_tokens(w, "warp")
    _check(w.anchor in ("ema", "sft"), "warp.anchor", w.anchor, "choose ema or sft")
    _check(w.merge in ("slerp", "linear"), "warp.merge", w.merge, "choose slerp or linear")
    _int_at_least(w, "warp", ("warmup_steps", "log_every", "kl_to_init_every", "checkpoint_every", "snapshot_every"), 0)
    _check(w.grad_clip is None or (_is_number(w.grad_clip) and w.grad_clip >= 0), "warp.grad_clip", w.grad_clip,
           "must be >= 0 or null")
    validate_prompt_lengths(cfg)
    if cfg.get("eval") is not None:
        _int_at_least(cfg.eval, "eval", ("prompts", "samples_per_prompt", "max_new_tokens", "batch_size"), 1)
        _int_at_least(cfg.eval, "eval", ("examples",), 0)
        check_min_new_tokens(cfg.eval, "eval")
    validate_trainer(cfg)
    validate_lora(cfg)
    validate_model_paths(cfg)


def validate_lora(cfg) -> None:
    """policy.lora of `train`: rank 0 (off) or more, alpha > 0, target modules named, no FSDP with adapters."""
    lora = cfg.policy.get("lora")
    if lora is None:
        return
    _int_at_least(lora, "policy.lora", ("rank",), 0)
    if lora.rank == 0:
        return
    _positive(lora, "policy.lora", ("alpha",))
    targets = lora.target_modules
    _check((isinstance(targets, str) and targets != "") or (isinstance(targets, ListConfig | list) and len(targets) > 0
           and all(isinstance(t, str) for t in targets)), "policy.lora.target_modules", targets,
           "name the adapted modules: all-linear, or a list such as [q_proj, v_proj]")
    _check(cfg.trainer.get("strategy", "auto") != "fsdp", "trainer.strategy", "fsdp",
           "LoRA adapters are not sharded: use trainer=ddp or ddp_runs with policy.lora.rank > 0, or rank 0")


def check_min_new_tokens(block, name: str) -> None:
    """`{name}.min_new_tokens` (absent: 0) is an integer between 0 and `{name}.max_new_tokens`."""
    value, top = block.get("min_new_tokens", 0), block.get("max_new_tokens")
    _check(isinstance(value, int) and 0 <= value and (not isinstance(top, int) or value <= top),
           f"{name}.min_new_tokens", value, f"must be an integer between 0 and {name}.max_new_tokens={top}")


def validate_prompt_lengths(cfg) -> None:
    d = cfg.data
    for key in ("min_prompt_tokens", "max_prompt_tokens"):
        _check(_is_int(d[key]), f"data.{key}", d[key], "must be an integer")
    _check(1 <= d.min_prompt_tokens <= d.max_prompt_tokens, "data.min_prompt_tokens", d.min_prompt_tokens,
           f"must be between 1 and data.max_prompt_tokens={d.max_prompt_tokens}")


PARALLEL = ("ddp", "ddp_runs", "fsdp")


def validate_trainer(cfg) -> None:
    """trainer.* of `train`: the strategy against devices, nodes and runs."""
    t = cfg.trainer
    strategy = t.get("strategy", "auto")
    _check(strategy in ("auto", *PARALLEL), "trainer.strategy", strategy, "choose auto, ddp, ddp_runs or fsdp")
    if strategy == "auto":
        for key in ("devices", "num_nodes"):
            value = t.get(key, 1)
            _check(value == 1 or (isinstance(value, ListConfig | list) and len(value) == 1), f"trainer.{key}", value,
                   "with trainer.strategy=auto train runs in one process: use trainer=ddp_runs (one run per "
                   "process), trainer=ddp or trainer=fsdp for several")
        return
    for key in ("devices", "num_nodes"):
        value = t.get(key, 1)
        _check(_is_int(value) and value >= 1, f"trainer.{key}", value,
               f"must be an integer >= 1 with trainer.strategy={strategy}")
    world = t.devices * t.get("num_nodes", 1)
    if strategy == "ddp_runs":
        _check(world == cfg.warp.runs, "trainer.devices", t.devices,
               f"ddp_runs trains one run per process: devices * num_nodes must equal warp.runs={cfg.warp.runs}")
    if strategy in ("ddp", "fsdp"):
        _check(cfg.warp.prompts_per_step % world == 0, "warp.prompts_per_step", cfg.warp.prompts_per_step,
               f"{strategy} splits each step's prompts over {world} processes: use a multiple of {world}")


def validate_one_process(cfg, command: str) -> None:
    """Commands that compute in one process (sft, reward, evaluate, front) ignore devices and strategies:
    a value that asks for several is refused rather than silently dropped."""
    t = cfg.trainer
    for key, one in (("devices", 1), ("num_nodes", 1), ("strategy", "auto")):
        value = t.get(key, one)
        _check(value == one or (key == "devices" and isinstance(value, ListConfig | list) and len(value) == 1),
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
    _check(accelerator in ACCELERATORS, "trainer.accelerator", accelerator, "choose auto, cpu, gpu (cuda) or mps")
    devices = _plain(t.get("devices", 1))
    several = devices == "auto" or devices == -1 or (_is_int(devices) and devices > 1) or isinstance(devices, list)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and several):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if accelerator != "auto":
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            _check(count > 0, "trainer.accelerator", accelerator,
                   f"no CUDA GPU is visible on this machine (torch {torch.__version__}"
                   + (f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "")
                   + "): use trainer.accelerator=cpu (or auto)")
        if count:
            if _is_int(devices):
                _check(devices <= count, "trainer.devices", devices, f"only {count} GPU(s) are visible on this machine")
            elif isinstance(devices, list):
                bad = [d for d in devices if not _is_int(d) or not 0 <= d < count]
                _check(not bad, "trainer.devices", devices, f"GPU indices go from 0 to {count - 1} on this machine")
    elif accelerator == "mps":
        import torch

        _check(torch.backends.mps.is_available(), "trainer.accelerator", accelerator,
               "no Apple GPU (MPS) is available here: use trainer.accelerator=cpu (or auto)")
    nodes = t.get("num_nodes", 1)
    if _is_int(nodes) and nodes > 1:
        _check(any(v in os.environ for v in CLUSTER_ENV), "trainer.num_nodes", nodes,
               "several nodes need a launcher that starts a process on each (srun under SLURM, torchrun), or "
               "NODE_RANK, MASTER_ADDR and MASTER_PORT set on each node; none is set here, so the processes "
               "would wait for the other nodes forever")


def _looks_local(name: str) -> bool:
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
        _check(build is None or build in BUILDS, f"{key}.build", build, f"choose {', '.join(BUILDS)} or null")
        name = str(cfg[key].name_or_path)
        if _looks_local(name) and not Path(name).expanduser().exists() and not build:
            raise UserError(f"{key}.name_or_path={name!r} does not exist: point it to a Hugging Face folder "
                            "or a hub name")
        overrides = cfg[key].get("build_overrides", [])
        _check(isinstance(overrides, ListConfig | list) and all(isinstance(o, str) for o in overrides),
               f"{key}.build_overrides", _plain(overrides), "must be a list of overrides of the build command, "
               "e.g. [sft.max_steps=100]")
    if models_to_build(cfg, keys):
        writable(str(cfg.paths.models_dir), "paths.models_dir", "the models built on first use are saved there")


def writable(path: str, key: str, why: str) -> None:
    """`path` is a folder we may write in, or can be created: its nearest existing ancestor is a writable folder."""
    if "${" in path:
        return
    p = Path(path).expanduser().absolute()
    if p.exists():
        _check(p.is_dir(), key, path, f"is not a folder ({why})")
    ancestor = p
    while not ancestor.exists():
        ancestor = ancestor.parent
    _check(ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK), key, path,
           f"cannot be written: {ancestor} is not a writable folder ({why})")


def validate_data(cfg, text_sets: Iterable[str]) -> None:
    """data.name, and for data=file the file itself (exists, readable, a .csv with a `text` column)."""
    d = cfg.data
    _check(d.name in text_sets, "data.name", d.name, f"choose one of {', '.join(text_sets)}")
    validate_prompt_lengths(cfg)
    if d.name != "file":
        return
    path = Path(str(d.path)).expanduser()
    hint = "point it to a .csv with a `text` column, a .jsonl with `text` fields, or a text file (one text per line)"
    _check(path.is_file(), "data.path", str(d.path), f"no such file: {hint}")
    _check(os.access(path, os.R_OK), "data.path", str(d.path), "cannot be read (permissions)")
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            header = [h.strip().lower() for h in next(csv.reader([f.readline()]), [])]
        _check("text" in header, "data.path", str(d.path), f"a .csv needs a `text` column (header: {','.join(header)})")


def validate_texts(value, key: str, text_sets: Iterable[str]) -> None:
    """Names of built-in text sets (`file` needs data.path, which these keys do not take)."""
    allowed = [n for n in text_sets if n != "file"]
    for name in [value] if isinstance(value, str) else list(value):
        _check(name in allowed, key, _plain(value), f"choose from {', '.join(allowed)}")


def _folder(value, key: str, needs: str | None, what: str, missing: str | None = None) -> None:
    """`value` is a folder (holding `needs`); `missing`: the message when it does not hold it."""
    path = Path(str(value)).expanduser()
    _check(path.is_dir(), key, str(value), f"no such folder: pass {what}")
    if needs and not (path / needs).exists():
        raise UserError(missing or f"{key}={str(value)!r} is invalid: has no {needs}: pass {what}")


def _models(value) -> dict[str, str]:
    """evaluate's `model`: a folder, a list of folders or {name: folder}."""
    value = _plain(value)
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return {str(v): str(v) for v in (value if isinstance(value, list) else [value])}


def validate_evaluation(cfg, command: str) -> None:
    """What evaluate and front read: the SFT reference (not built by these commands), eval.*."""
    sft = str(cfg.sft)
    if not Path(sft).expanduser().exists():  # the words of eval/protocol.py
        raise UserError(f"sft={sft} does not exist: pass the SFT policy's Hugging Face folder"
                        + (" (`python -m warp_lightning train` or `sft` builds it)" if cfg.policy.get("build") else ""))
    e = cfg.eval
    _int_at_least(e, "eval", ("subsamples", "prompts", "samples_per_prompt", "max_new_tokens", "batch_size"), 1)
    _positive(e, "eval", ("temperature",))
    check_min_new_tokens(e, "eval")
    validate_model_paths(cfg, ("reward_model",))


def validate_command(name: str, cfg, run_dir: str | None = None, text_sets: Iterable[str] = (),
                     assets: Iterable[str] = ()) -> None:
    """Every check of command `name` that the config, the file system and the machine allow, before it starts.

    `run_dir`: `hydra.run.dir` when given; `text_sets`, `assets`: the names data.texts and data.assets know.
    """
    check_missing(cfg)
    text_sets, assets = tuple(text_sets), tuple(assets)
    if run_dir is not None or "paths" in cfg:
        writable(run_dir or str(cfg.paths.output_dir), "hydra.run.dir" if run_dir else "paths.output_dir",
                 "the command's outputs go there")
    if "trainer" in cfg:
        validate_machine(cfg)
    if name == "train":
        validate_train_config(cfg)
        validate_data(cfg, text_sets)
    elif name in ("sft", "reward", "evaluate", "front"):
        validate_one_process(cfg, name)
    if name == "sft":
        s = cfg.sft
        _int_at_least(s, "sft", ("n_layer", "n_embd", "n_head", "context", "n_positions", "batch_size", "max_steps",
                                 "val_every", "limit_val_batches", "max_val_blocks"), 1)
        _int_at_least(s, "sft", ("warmup_steps", "log_every"), 0)
        _check(s.n_embd % s.n_head == 0, "sft.n_head", s.n_head, f"must divide sft.n_embd={s.n_embd}")
        _check(_is_number(s.dropout) and 0 <= s.dropout < 1, "sft.dropout", s.dropout, "must be in [0, 1)")
        _positive(s, "sft", ("lr",))
        validate_texts(s.corpus, "sft.corpus", text_sets)
        writable(str(Path(str(cfg.save_to)).parent), "save_to", "the trained policy is saved there")
        if s.get("init") is not None:  # the pretrained model to adapt: a folder, a hub name or an offline build
            validate_model_paths(OmegaConf.create({"sft.init": OmegaConf.to_container(s.init, resolve=True),
                                                   "paths": OmegaConf.to_container(cfg.paths, resolve=True)}),
                                 keys=("sft.init",))
    elif name == "reward":
        r = cfg.reward_training
        _int_at_least(r, "reward_training", ("batch_size", "epochs", "max_length", "eval_max_length"), 1)
        _int_at_least(r, "reward_training", ("warmup_steps", "log_every"), 0)
        _check(r.max_steps == -1 or (_is_int(r.max_steps) and r.max_steps >= 1), "reward_training.max_steps",
               r.max_steps, "must be -1 (one pass of `epochs`) or an integer >= 1")
        for key in ("max_train_texts", "max_val_texts", "max_eval_texts"):
            value = r.get(key)
            _check(value is None or (_is_int(value) and value >= 2), f"reward_training.{key}", value,
                   "must be null or an integer >= 2")
        _positive(r, "reward_training", ("lr",))
        validate_texts(cfg.reward_model.train_data, "reward_model.train_data", text_sets)
        validate_texts(r.eval_sets, "reward_training.eval_sets", text_sets)
        base = str(cfg.reward_model.base)
        _check(base in assets or not _looks_local(base) or Path(base).expanduser().exists(), "reward_model.base",
               base, f"does not exist: an asset name ({', '.join(assets)}), a local folder or a hub name")
        writable(str(Path(str(cfg.save_to)).parent), "save_to", "the trained reward model is saved there")
    elif name == "evaluate":
        for path in _models(cfg.model).values():
            if not Path(path).expanduser().exists():  # the words of eval/evaluate.py
                raise UserError(f"model={path} does not exist: pass a Hugging Face folder, e.g. "
                                "model=outputs/train/.../final")
        validate_data(cfg, text_sets)
        validate_evaluation(cfg, name)
    elif name == "front":
        runs = {"run": _plain(cfg.run), **{f"baselines.{k}": v for k, v in (_plain(cfg.baselines) or {}).items()}}
        for key, paths in runs.items():  # a folder, or a list of folders (one arm, several seeds)
            for path in paths if isinstance(paths, list) else [paths]:  # the words of eval/front.py
                _folder(path, key, "manifest.json", "a train run folder",
                        f"{path} is not a finished train run (no manifest.json): pass a train run folder")
        validate_data(cfg, text_sets)
        validate_evaluation(cfg, name)
        for key in ("etas", "linear_etas"):
            values = _plain(cfg.get(key)) or []
            _check(all(_is_number(v) and 0 <= v <= 1 for v in values), key, values, "give values in [0, 1]")
    elif name == "report":
        given = {k: cfg.get(k) for k in ("evaluation", "sweep", "front", "run")}
        if not any(given.values()):
            raise UserError("nothing to report: pass evaluation=DIR, sweep=DIR, front=DIR and/or run=DIR")
        needs = {"evaluation": ("metrics.json", "an `evaluate` run folder"), "sweep": (None, "the multirun folder "
                 "of `train -m hparams_search=steps`"), "front": ("front.csv", "a `front` run folder"),
                 "run": ("manifest.json", "a finished train run folder")}
        for key, value in given.items():
            if value:  # the words of eval/report.py
                needed, what = needs[key]
                _folder(value, key, needed, what, f"{key}={value} has no {needed}: pass {what}")
        writable(str(cfg.out), "out", "the reports are written there")
    elif name == "assets":
        names = _plain(cfg.assets.names)
        names = [names] if isinstance(names, str) else names
        unknown = [n for n in names if n not in assets]
        if unknown:  # the words of data/assets.py
            raise UserError(f"assets.names: unknown asset {unknown[0]!r}; choose from {', '.join(assets)}")
        writable(str(cfg.paths.cache_dir), "paths.cache_dir", "the assets are fetched there")
