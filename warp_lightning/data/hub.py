"""What a command needs from the Hugging Face hub, checked before it starts (the CLI calls `check_hub`).

On a machine that cannot reach the hub (a cluster's compute node, or `HF_HUB_OFFLINE=1`), a hub name that is not
in the local cache would cost a minute of the hub client's retries and end in an error from deep inside a build;
this stops the command first, in one line naming what it needs and the two ways out. Local folders, the assets of
ASSETS.md and the built-in sets are never looked up, and the hub is probed (one request, `PROBE_TIMEOUT_S`) only
when something it serves is needed and not in the cache: the offline default makes no network call.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from warp_lightning import UserError
from warp_lightning.data.assets import ASSETS
from warp_lightning.data.prompt_datasets import BUILTIN_SETS, FILE_BUILDERS
from warp_lightning.data.texts import IMDB_HUB_ID
from warp_lightning.utils.validate import looks_local

PROBE_TIMEOUT_S = 2.0
DOCS = "docs/experiments.md, the classic assignment"


@dataclass(frozen=True)
class Need:
    """A hub repository a run reads: `key` is the config key that takes a local copy instead."""

    key: str
    name: str
    kind: str  # model | dataset
    why: str = ""  # e.g. "for the build of reward_model"


def is_hub_name(name) -> bool:
    """Neither an existing path, nor a path-like name, nor an asset of ASSETS.md: what `from_pretrained` and
    `load_dataset` would ask the hub for."""
    text = str(name)
    return bool(text) and text not in ASSETS and not looks_local(text) and not Path(text).expanduser().exists()


def _model(key: str, name, why: str = "") -> list[Need]:
    return [Need(key, str(name), "model", why)] if name is not None and is_hub_name(name) else []


def _text_sets(value, key: str, path=None, why: str = "") -> list[Need]:
    """`imdb` among the text sets `value`: the hub's IMDB, or `path` (a local copy, or another hub dataset)."""
    names = [value] if isinstance(value, str) else list(value or [])
    if "imdb" not in names or (path and not is_hub_name(path)):
        return []
    return [Need(key, str(path or IMDB_HUB_ID), "dataset", why)]


def _data(d) -> list[Need]:
    if d.name == "imdb":
        return _text_sets("imdb", "data.path", d.get("path"))
    path = str(d.get("path"))
    if d.name != "prompts" or path in BUILTIN_SETS or Path(path).suffix.lower() in FILE_BUILDERS \
            or not is_hub_name(path):  # the rules of prompt_datasets.load_source
        return []
    return [Need("data.path", path, "dataset")]


def _reward_models(rm, key: str = "reward_model") -> list[Need]:
    """The hub names of a reward (a sum's terms included): its classifier, or what its build reads."""
    kind = rm.get("kind", "classifier")
    if kind == "sum":
        return [n for name, term in rm.terms.items() for n in _reward_models(term, f"{key}.terms.{name}")]
    if kind != "classifier" or Path(str(rm.name_or_path)).expanduser().exists():
        return []
    if rm.get("build") == "reward":
        why = f"for the build of {key}"
        return (_model(f"{key}.base", rm.base, why)
                + _text_sets(rm.train_data, f"{key}.train_data_path", rm.get("train_data_path"), why))
    return _model(f"{key}.name_or_path", rm.name_or_path)


def _policy(cfg) -> list[Need]:
    return [] if cfg.policy.get("build") else _model("policy.name_or_path", cfg.policy.name_or_path)


def _evaluation(cfg) -> list[Need]:
    """evaluate and front: the reward, the prompts and the judge's texts (the models are local folders)."""
    return (_reward_models(cfg.reward_model) + _data(cfg.data)
            + _text_sets((cfg.get("judge") or {}).get("train_data"), "judge.train_data"))


NEEDS = {
    "train": lambda cfg: _policy(cfg) + _evaluation(cfg),
    "evaluate": _evaluation,
    "front": _evaluation,
    "reward": lambda cfg: (_model("reward_model.base", cfg.reward_model.base)
                           + _text_sets(cfg.reward_model.train_data, "reward_model.train_data_path",
                                        cfg.reward_model.get("train_data_path"))
                           + _text_sets(cfg.reward_training.eval_sets, "reward_training.eval_sets")),
    "sft": lambda cfg: ((_model("sft.init.name_or_path", cfg.sft.init.name_or_path)
                         if cfg.sft.get("init") is not None and not cfg.sft.init.get("build") else [])
                        + _text_sets(cfg.sft.corpus, "sft.corpus")),
}


def hub_needs(command: str, cfg) -> list[Need]:
    """What `command` with `cfg` (and the builds it runs on first use) reads from the hub."""
    return NEEDS[command](cfg) if command in NEEDS else []


def cached(need: Need, hub_cache: str | None = None, datasets_caches=()) -> bool:
    """In the local cache, where transformers and datasets look when the hub is offline: a model's config.json in
    the hub cache; a dataset prepared once in a datasets cache (`<org>___<name>/<config>/<version>/<hash>/`)."""
    if need.kind == "model":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(need.name, "config.json", cache_dir=hub_cache), str)
    from datasets.naming import camelcase_to_snakecase

    *org, name = need.name.split("/")
    folder = "___".join([*org, camelcase_to_snakecase(name)])
    return any(glob.glob(os.path.join(str(c), folder, "*", "*", "*")) for c in datasets_caches)


def unreachable() -> str | None:
    """Why the hub cannot be reached (offline mode, or no answer to one request), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 is set"
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)  # any HTTP answer: reachable
    except Exception as err:  # httpx's connect errors and timeouts, a proxy refusing: all mean unreachable
        return f"no answer from {constants.ENDPOINT}: {type(err).__name__}, waited at most {PROBE_TIMEOUT_S:g} s"
    return None


def describe(missing: list[Need], reason: str) -> str:
    """The one line: what is needed from the hub, why it cannot be had, and the two ways out."""
    names: dict[tuple[str, str], list[Need]] = {}
    for n in missing:
        names.setdefault((n.kind, n.name), []).append(n)
    what = ", ".join(f"the {kind} {name} ({'; '.join(n.key + (f' {n.why}' if n.why else '') for n in needs)})"
                     for (kind, name), needs in names.items())
    keys = " ".join(dict.fromkeys(f"{n.key}=DIR" for n in missing))
    return (f"{', '.join(dict.fromkeys(n.key for n in missing))}: this run needs from the Hugging Face hub {what}, "
            f"not in the local cache, and the hub cannot be reached ({reason}); run it once where the hub is "
            f"reachable (the files are then cached), or point the config at local copies: {keys} ({DOCS})")


def check_hub(command: str, cfg) -> None:
    """Stop with one line (UserError) when `command` needs from the hub what is neither cached nor reachable."""
    needs = hub_needs(command, cfg)
    if not needs:
        return
    from datasets import config as datasets_config

    # load_dataset's default cache (texts.py), and the project's (prompt_datasets.py)
    datasets_caches = (datasets_config.HF_DATASETS_CACHE, Path(str(cfg.paths.cache_dir)).expanduser() / "datasets")
    missing = [n for n in dict.fromkeys(needs) if not cached(n, datasets_caches=datasets_caches)]
    reason = unreachable() if missing else None
    if reason:
        raise UserError(describe(missing, reason))
