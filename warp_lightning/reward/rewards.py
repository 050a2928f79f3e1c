"""Rewards of `conf/reward_model/`, three kinds behind one call (what a TRL `reward_funcs` user expects):

    reward(prompts, completions, columns) -> RewardScores(total [N] float32, terms {name: [N] float32})

- `classifier`: an `AutoModelForSequenceClassification` (the project's trained reward models are this kind)
  scoring `label` as `score`, reading the completion alone or prompt + completion (`reads`; the prompt is cut from
  the left when the two exceed `max_length`, so that the completion is always read);
- `function`: `module:function`, called as `fn(prompts=..., completions=..., **columns)`, one float per completion
  (a column named like an argument the call passes itself, prompts, completions or a keyword of `arguments`, is
  refused: it would replace it). As TRL's `reward_funcs` are called: a string prompt and its completion as
  strings; a conversational prompt (chat messages, `columns["prompt_messages"]`) as its list of messages, and its
  completion as one assistant message, `[{"role": "assistant", "content": TEXT}]`;
- `sum`: `terms: {name: {<a classifier or function config>, weight: w}}`; total = sum of w * term, and each
  term (unweighted) in `terms`, which train logs as `reward/NAME` and evaluate reports beside the total.

`columns` are the dataset's other columns, one value per completion. Config mistakes are one line before any work
(`check_reward_config`, `check_reward_columns`); a function's bad output is one line naming the term and the row;
`checked_scores`, the call every command makes (train, evaluate, front), refuses a wrong count or a non-finite
score of any kind in one line.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import numbers
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig

from warp_lightning import NonFiniteError, UserError
from warp_lightning.data.prompt_datasets import MESSAGES
from warp_lightning.reward.scorer import SCORES, RewardModel, check_score, resolve_label

KINDS = ("classifier", "function", "sum")
READS = ("prompt_completion", "completion")
FIXED_ARGUMENTS = ("prompts", "completions")  # what every function gets beside the dataset's columns
# a term named like these would collide with the figures evaluate reports beside the terms (reward_diff_mean, ...)
RESERVED_NAMES = ("total", "mean", "std", "diff")


@dataclass
class RewardScores:
    """`total`: what RL maximises, one float32 per completion (CPU); `terms`: a sum's terms, unweighted."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class ClassifierReward:
    """A sequence classifier (`RewardModel`) reading the completion alone or the prompt followed by it: texts
    always (a conversational prompt as the policy read it, its chat template rendered)."""

    def __init__(self, scorer: RewardModel, reads: str = "prompt_completion", name: str = "classifier"):
        self.scorer, self.reads, self.name = scorer, reads, name

    def __call__(self, prompts: list[str], completions: list[str], columns: dict | None = None) -> RewardScores:
        # prompt + completion: the prompt is cut from the left when both exceed max_length (`RewardModel.encode`)
        context = None if self.reads == "completion" else prompts
        return RewardScores(self.scorer(completions, context).to(torch.float32))


class FunctionReward:
    """A Python function of the completions; it receives the keywords it names (all of them with **kwargs). A row
    whose prompt is a conversation (`columns["prompt_messages"]`) reaches it as TRL passes one (`conversational`)."""

    def __init__(self, fn, name: str, arguments: dict | None = None):
        self.fn, self.name, self.arguments = fn, name, dict(arguments or {})
        self.accepted, self.required, self.takes_all = keywords(fn)

    def __call__(self, prompts: list[str], completions: list[str], columns: dict | None = None) -> RewardScores:
        own = (*FIXED_ARGUMENTS, *self.arguments)  # what the call passes itself: no column may replace it
        clash = [c for c in (columns or {}) if c in own]
        if clash:
            raise UserError(f"reward term {self.name!r}: the dataset's column {clash[0]} has the name of an argument "
                            f"the reward passes itself ({', '.join(own)}) and would replace it; rename the column")
        as_prompts, as_completions = conversational(prompts, completions, (columns or {}).get(MESSAGES))
        given = {"prompts": as_prompts, "completions": as_completions, **(columns or {}), **self.arguments}
        missing = sorted(self.required - set(given))
        if missing:
            raise UserError(f"reward term {self.name!r}: the function needs {', '.join(missing)}, which the batch "
                            f"does not carry (it has {', '.join(given)}); give the parameter a default or add the column")
        values = self.fn(**(given if self.takes_all else {k: v for k, v in given.items() if k in self.accepted}))
        return RewardScores(function_scores(values, completions, self.name))


def conversational(prompts: list[str], completions: list[str], messages: list | None) -> tuple[list, list]:
    """The prompts and completions a reward function receives, TRL's convention: where a row's prompt is a
    conversation (`messages[row]`, its chat messages), the prompt is that list of messages (a copy: the function
    may change it) and the completion `[{"role": "assistant", "content": text}]`; a string prompt and its
    completion stay strings."""
    if not messages:
        return prompts, completions
    as_prompts, as_completions = list(prompts), list(completions)
    for row, chat in enumerate(messages):
        if chat is not None:
            as_prompts[row] = copy.deepcopy(chat)
            as_completions[row] = [{"role": "assistant", "content": completions[row]}]
    return as_prompts, as_completions


def checked_scores(reward, prompts: list[str], completions: list[str], columns: dict | None = None,
                   where: str = "") -> RewardScores:
    """`reward(prompts, completions, columns)` with the checks of every command that scores (train, evaluate,
    front): one score per completion, each finite, a sum's terms too (the first non-finite term is named: a
    classifier's NaN as a function's). Each refusal is one line naming `where` (e.g. the step), a reward's own
    one-line error (a function's bad row) gets it added; the scores come back as float32."""
    at = f" at {where}" if where else ""
    try:
        scores = reward(prompts, completions, columns if columns is not None else {})
    except UserError as err:  # NonFiniteError too, keeping its exit status
        if not where:
            raise
        raise type(err)(f"{err} (at {where})") from None
    n = len(completions)
    total = torch.as_tensor(scores.total).to(torch.float32)
    terms = {name: torch.as_tensor(term).to(torch.float32) for name, term in scores.terms.items()}
    for name, values in (("", total), *terms.items()):
        if values.shape != (n,):
            raise UserError(f"reward model returned shape {tuple(values.shape)}{at}"
                            + (f" for its term {name!r}" if name else "")
                            + f", expected ({n},): one score per completion")
    for name, values in (*terms.items(), ("", total)):  # a term first: it says which reward broke
        bad = ~torch.isfinite(values)
        if bad.any():
            row = int(bad.nonzero()[0])
            raise NonFiniteError(f"non-finite reward{at} ({f'term {name!r}: ' if name else ''}{int(bad.sum())} of "
                                 f"{n} completions, first row {row}: {values[row].item()} for the completion "
                                 f"{_short(completions[row])}): check the reward model")
    return RewardScores(total, terms)


def keywords(fn) -> tuple[set[str], set[str], bool]:
    """(the keywords `fn` takes, those without a default, whether it takes **kwargs)."""
    params = list(inspect.signature(fn).parameters.values())
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return ({p.name for p in named}, {p.name for p in named if p.default is p.empty},
            any(p.kind is p.VAR_KEYWORD for p in params))


def function_scores(values, completions: list[str], name: str) -> torch.Tensor:
    """A function's output as float32, after checking it holds one finite number (bools count) per completion;
    else one line naming the term and the first bad row."""
    values = values.tolist() if hasattr(values, "tolist") else values  # a tensor or a numpy array
    if not isinstance(values, list | tuple):
        raise UserError(f"reward term {name!r}: the function returned {_short(values)} ({type(values).__name__}), "
                        f"not a list: return one float per completion ({len(completions)} here)")
    if len(values) != len(completions):
        raise UserError(f"reward term {name!r}: the function returned {len(values)} values for {len(completions)} "
                        "completions: return one float per completion")
    floats = []
    for row, v in enumerate(values):
        v = v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v
        if not isinstance(v, numbers.Real):
            raise UserError(f"reward term {name!r}: row {row} returned {_short(v)} ({type(v).__name__}), not a number "
                            f"(completion {_short(completions[row])}): return one float per completion")
        if not math.isfinite(v):
            raise NonFiniteError(f"reward term {name!r}: row {row} returned {v} (completion "
                                 f"{_short(completions[row])}): return a finite float per completion")
        floats.append(float(v))
    return torch.tensor(floats, dtype=torch.float32)


def _short(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class WeightedSum:
    """total = sum over terms of weight * term; `terms` keeps each term's own scores (what is logged)."""

    def __init__(self, terms: dict[str, tuple[object, float]]):
        self.terms = terms

    def __call__(self, prompts: list[str], completions: list[str], columns: dict | None = None) -> RewardScores:
        scores = {name: reward(prompts, completions, columns).total for name, (reward, _) in self.terms.items()}
        total = torch.zeros(len(completions), dtype=torch.float32)
        for name, (_, weight) in self.terms.items():
            total = total + float(weight) * scores[name]
        return RewardScores(total, scores)


# --- configs ---------------------------------------------------------------------------------------------------

def _kind(cfg) -> str:
    return cfg.get("kind", "classifier")  # configs written before the kinds existed are classifiers


def load_reward(cfg, device: str | torch.device = "cpu", key: str = "reward_model"):
    """The reward of a `conf/reward_model/*.yaml` config (checked first), its classifiers on `device`."""
    check_reward_config(cfg, key)
    return _build(cfg, device, key)


def _build(cfg, device, key: str):
    kind = _kind(cfg)
    # a sum's term is named by its key; a reward alone by its function's name, or its config key
    name = key.rpartition(".terms.")[2] if ".terms." in key else str(cfg.get("function", key)).rpartition(":")[2]
    if kind == "sum":
        return WeightedSum({str(n): (_build(t, device, f"{key}.terms.{n}"), t.weight) for n, t in cfg.terms.items()})
    if kind == "function":
        return FunctionReward(import_function(cfg.function, f"{key}.function"), name, _arguments(cfg))
    scorer = RewardModel.from_pretrained(cfg.name_or_path, device=device, key=key, sigmoid=cfg.get("sigmoid", True),
                                         max_length=cfg.max_length, batch_size=cfg.batch_size,
                                         label=cfg.get("label", 0), score=cfg.get("score", "bradley_terry"))
    return ClassifierReward(scorer, cfg.get("reads", "prompt_completion"), name)


def classifier_configs(cfg, key: str = "reward_model") -> dict[str, DictConfig]:
    """{config key: classifier config} of every classifier of a reward (a sum's terms included): what
    `builds.ensure_model` builds on first use and the model-path checks read."""
    if _kind(cfg) == "sum":
        return {k: c for name, term in cfg.terms.items() for k, c in classifier_configs(term, f"{key}.terms.{name}").items()}
    return {key: cfg} if _kind(cfg) == "classifier" else {}


def import_function(spec, key: str):
    """`module:function`, importable from the working directory or PYTHONPATH; one line if it is not."""
    module_name, _, attr = str(spec).partition(":")
    if not module_name or not attr:
        raise UserError(f"{key}={spec!r} is invalid: write it module:function, e.g. warp_lightning.reward.rules:length_rule")
    if os.getcwd() not in sys.path:  # `python -m` puts it there; so that a library caller sees the same modules
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name or module_name.startswith(f"{err.name}."):
            raise UserError(f"{key}={spec!r} is invalid: no module {err.name!r} in the working directory "
                            f"({os.getcwd()}) or on PYTHONPATH; check the name or add its folder to PYTHONPATH") from None
        raise UserError(f"{key}={spec!r}: importing {module_name} failed: {err}") from None
    except Exception as err:  # the module's own code failed: its error, on one line
        raise UserError(f"{key}={spec!r}: importing {module_name} failed: {type(err).__name__}: "
                        f"{' '.join(str(err).split())}") from None
    if not hasattr(module, attr):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UserError(f"{key}={spec!r} is invalid: {module_name} has no {attr!r}"
                        + (f"; it defines {', '.join(defined)}" if defined else ""))
    fn = getattr(module, attr)
    if not callable(fn):
        raise UserError(f"{key}={spec!r} is invalid: {module_name}.{attr} is a {type(fn).__name__}, not a function")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins
        raise UserError(f"{key}={spec!r} is invalid: its signature cannot be read; wrap it in a Python function") from None
    positional = [p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if positional:
        raise UserError(f"{key}={spec!r} is invalid: it takes {', '.join(positional)} by position only; it is called "
                        "with keywords (prompts=..., completions=..., a column=...)")
    return fn


def check_reward_config(cfg, key: str = "reward_model") -> None:
    """Every mistake a reward config can show without loading a model: kind, score, reads, label (of a local
    folder), the function's import, a sum's names and weights. One line (UserError) for the first."""
    kind = _kind(cfg)
    if kind not in KINDS:
        raise UserError(f"{key}.kind={kind!r} is invalid: choose {', '.join(KINDS)}")
    if kind == "function":
        _require(cfg, key, "function", "module:function, e.g. warp_lightning.reward.rules:length_rule")
        _check_arguments(cfg, key)
    elif kind == "classifier":
        _check_classifier(cfg, key)
    else:
        _check_sum(cfg, key)


def _arguments(cfg) -> dict:
    return OmegaConf.to_container(cfg.arguments, resolve=True) if cfg.get("arguments") else {}


def _check_arguments(cfg, key: str) -> None:
    """The function imports, and takes every keyword of `arguments` (the config's fixed keywords)."""
    accepted, _, takes_all = keywords(import_function(cfg.function, f"{key}.function"))
    arguments = cfg.get("arguments")
    if arguments is not None and not isinstance(arguments, DictConfig):
        raise UserError(f"{key}.arguments={arguments!r} is invalid: a mapping of keywords, e.g. {{target_words: 20}}")
    unknown = sorted(set(arguments or {}) - accepted) if not takes_all else []
    if unknown:
        raise UserError(f"{key}.arguments.{unknown[0]} is invalid: {cfg.function} takes no such keyword (it takes "
                        f"{', '.join(sorted(accepted))})")


def _require(cfg, key: str, field_name: str, what: str) -> None:
    if field_name not in cfg or OmegaConf.is_missing(cfg, field_name) or cfg[field_name] is None:
        raise UserError(f"{key}.{field_name} is missing: pass {key}.{field_name}=... ({what})")


def _check_classifier(cfg, key: str) -> None:
    _require(cfg, key, "name_or_path", "a sequence-classifier folder or hub name")
    score, reads, label = cfg.get("score", "bradley_terry"), cfg.get("reads", "prompt_completion"), cfg.get("label", 0)
    if score not in SCORES:
        raise UserError(f"{key}.score={score!r} is invalid: choose {', '.join(SCORES)}")
    if reads not in READS:
        raise UserError(f"{key}.reads={reads!r} is invalid: choose {', '.join(READS)}")
    if not isinstance(label, int | str) or isinstance(label, bool):
        raise UserError(f"{key}.label={label!r} is invalid: an output index or a name of the model's id2label")
    config = Path(str(cfg.name_or_path)).expanduser() / "config.json"
    if config.is_file():  # a folder here (built or given): its labels, without loading the weights
        model_config = AutoConfig.from_pretrained(config.parent)
        resolve_label(label, model_config.id2label, key)
        check_score(score, model_config.num_labels, key)


def _check_sum(cfg, key: str) -> None:
    terms = cfg.get("terms")
    if not isinstance(terms, DictConfig) or not terms:
        raise UserError(f"{key}.terms={OmegaConf.to_container(terms) if terms is not None else None!r} is invalid: "
                        "a mapping {name: {kind: ..., weight: w, ...}} with at least one term")
    seen: dict[str, str] = {}
    for name, term in terms.items():
        name, where = str(name), f"{key}.terms.{name}"
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or name.lower() in RESERVED_NAMES:
            raise UserError(f"{where}: {name!r} is not a usable term name: letters, digits and _, starting with a "
                            f"letter, none of {', '.join(RESERVED_NAMES)} (it names the logged reward/{name})")
        if name.lower() in seen:
            raise UserError(f"{where}: the term names {seen[name.lower()]!r} and {name!r} clash (logged metric "
                            "names are compared without case): rename one")
        seen[name.lower()] = name
        if not isinstance(term, DictConfig):
            raise UserError(f"{where}={term!r} is invalid: a reward config with its weight, e.g. "
                            "{kind: function, function: module:function, weight: 1.0}")
        weight = term.get("weight")
        if "weight" not in term or OmegaConf.is_missing(term, "weight") or weight is None:
            raise UserError(f"{where}.weight is missing: pass {where}.weight=... (a number, its factor in the sum)")
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not math.isfinite(weight):
            raise UserError(f"{where}.weight={weight!r} is invalid: a finite number, the term's factor in the sum")
        if _kind(term) == "sum":
            raise UserError(f"{where}.kind=sum is invalid: a term cannot be a sum itself; list its terms in {key}.terms")
        check_reward_config(term, where)


def check_reward_columns(cfg, columns: set[str], key: str = "reward_model", source: str = "data.path") -> None:
    """Call it once the dataset's `columns` are known, before any work: no column has the name of an argument a
    function gets from the reward itself (prompts, completions, the keywords of its `arguments`), which the column
    would replace; and each function's required keyword parameters are among those and the `columns`. `source`:
    what the first refusal names (`data.path='FILE'`)."""
    if _kind(cfg) == "sum":
        for name, term in cfg.terms.items():
            check_reward_columns(term, columns, f"{key}.terms.{name}", source)
        return
    if _kind(cfg) != "function":
        return
    arguments = list(_arguments(cfg))
    for column in sorted(set(columns) & {*FIXED_ARGUMENTS, *arguments}):
        fix = ("rename the column" if column in FIXED_ARGUMENTS
               else f"rename the column or drop {key}.arguments.{column}")
        raise UserError(f"{source} is invalid: its column {column} has the name of an argument that {key}.function="
                        f"{cfg.function!r} gets from the reward itself ({', '.join((*FIXED_ARGUMENTS, *arguments))}) "
                        f"and would replace it; {fix}")
    required = keywords(import_function(cfg.function, f"{key}.function"))[1]
    needed = required - set(FIXED_ARGUMENTS) - set(_arguments(cfg)) - set(columns)
    if needed:
        have = ", ".join(sorted(columns)) or "none but the prompt"
        raise UserError(f"{key}.function={cfg.function!r} needs the column {', '.join(sorted(needed))}, which the "
                        f"dataset lacks (its columns: {have}); add it to the data or give the parameter a default")
