"""The checks of `evaluate`, `front` and `report`, run once before they start (their records: commands.py)."""

from __future__ import annotations

from pathlib import Path

from warp_lightning import UserError
from warp_lightning.data.checks import check_data, data_source
from warp_lightning.eval.judge import READS
from warp_lightning.reward.rewards import check_reward_columns, check_reward_config, classifier_configs
from warp_lightning.utils.validate import (
    check,
    check_folder,
    check_min_new_tokens,
    int_at_least,
    is_number,
    one_of,
    plain,
    positive,
    validate_models,
    validate_one_process,
    writable,
)

NOT_A_RUN = "{path} is not a finished train run (no manifest.json): pass a train run folder"  # also eval/front.py's

# The largest LITI coefficient of a front: (1 - eta) * theta_sft + eta * theta_slerp interpolates up to 1
# (an eta above 1 would extrapolate past the merged policy, as ExPO does).
MAX_ETA = 2.0  # eta > 1 extrapolates beyond theta_slerp (ExPO); the front marks those points


def check_judge(cfg) -> None:
    """judge.reads: what the held-out judge scores."""
    if cfg.get("judge") is not None:
        reads = cfg.judge.get("reads", "prompt_completion")
        check(reads in READS, "judge.reads", reads, f"choose {one_of(READS)}")


def check_reward_data(cfg) -> None:
    """The data (`check_data`), then its columns (a text set's as a data=prompts dataset's) against the reward: none
    may have the name of an argument the reward passes itself (it would replace it), and each column a function
    needs is there. The same check as train, evaluate and front run once the prompts are read."""
    columns = check_data(cfg)
    check_reward_config(cfg.reward_model)  # sound, before its functions are read
    check_reward_columns(cfg.reward_model, columns, source=data_source(cfg.data))


def check_evaluation(cfg) -> None:
    """What evaluate and front read: the SFT reference (not built by these commands), eval.*."""
    sft = str(cfg.sft)
    if not Path(sft).expanduser().exists():
        raise UserError(f"sft={sft} does not exist: pass the SFT policy's Hugging Face folder"
                        + (" (`python -m warp_lightning train` or `sft` builds it)" if cfg.policy.get("build") else ""))
    e = cfg.eval
    int_at_least(e, "eval", ("subsamples", "prompts", "samples_per_prompt", "max_new_tokens", "batch_size"), 1,
                 nullable=("prompts",))  # null: the whole split
    positive(e, "eval", ("temperature",))
    check_min_new_tokens(e, "eval")
    check_reward_config(cfg.reward_model)
    check_judge(cfg)
    validate_models(classifier_configs(cfg.reward_model), cfg.paths)


def check_evaluate(cfg) -> None:
    """The models to evaluate (`model`: a folder, a list of folders or {name: folder}) exist, then the data and
    the protocol's settings."""
    validate_one_process(cfg, "evaluate")
    given = plain(cfg.model)
    for path in given.values() if isinstance(given, dict) else given if isinstance(given, list) else [given]:
        if not Path(str(path)).expanduser().exists():
            raise UserError(f"model={path} does not exist: pass a Hugging Face folder, e.g. "
                            "model=outputs/train/.../final")
    check_reward_data(cfg)
    check_evaluation(cfg)


def check_etas(cfg, top: float = MAX_ETA) -> None:
    """front's `etas` (at least one), `linear_etas` and `merge_etas` (may be empty): LITI coefficients in [0, top]."""
    for key in ("etas", "linear_etas", "merge_etas"):
        values = plain(cfg.get(key)) or []
        check(all(is_number(v) and 0 <= v <= top for v in values) and (values or key != "etas"), key, values,
              f"give values in [0, {top:g}]")


def check_front(cfg) -> None:
    """The runs and baselines are finished train runs, then the data, the protocol's settings and the etas."""
    validate_one_process(cfg, "front")
    runs = {"run": plain(cfg.run), **{f"baselines.{k}": v for k, v in (plain(cfg.baselines) or {}).items()}}
    for key, paths in runs.items():  # a folder, or a list of folders (one arm, several seeds)
        for path in paths if isinstance(paths, list) else [paths]:
            check_folder(path, key, "manifest.json", "a train run folder", NOT_A_RUN.format(path=path))
    check_reward_data(cfg)
    check_evaluation(cfg)
    check_etas(cfg)


def check_report(cfg) -> None:
    """At least one of evaluation, sweep, front and run, each a folder holding what report reads."""
    given = {k: cfg.get(k) for k in ("evaluation", "sweep", "front", "run")}
    if not any(given.values()):
        raise UserError("nothing to report: pass evaluation=DIR, sweep=DIR, front=DIR and/or run=DIR")
    needs = {"evaluation": ("metrics.json", "an `evaluate` run folder"), "sweep": (None, "the multirun folder "
             "of `train -m hparams_search=steps`"), "front": ("front.csv", "a `front` run folder"),
             "run": ("manifest.json", "a finished train run folder")}
    for key, value in given.items():
        if value:
            needed, what = needs[key]
            check_folder(value, key, needed, what, f"{key}={value} has no {needed}: pass {what}")
    writable(str(cfg.out), "out", "the reports are written there")
