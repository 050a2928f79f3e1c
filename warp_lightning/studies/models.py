"""`study action=build`: the models a study's jobs load from the models cache and build on first use (the SFT
policy, the reward models: a WARM is two hours in fp32 on one thread), built ahead, so that no job's minutes count a
build and two jobs started at once do not wait on one build.

What each job needs is read from its own commands: the config of the first job of every arm's `train` and `front`
(with `extra`), composed as those commands compose it, and each model built as that command would build it (the
same build command, with the command's choice of the model's config: `policy=sft_smollm2`). Reward arms train
their own models in their own folders: nothing to build ahead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from warp_lightning.builds import ensure_model
from warp_lightning.reward.rewards import classifier_configs
from warp_lightning.studies.jobs import study_jobs

log = logging.getLogger(__name__)


class Needed(NamedTuple):
    key: str  # the config key that names it: policy, reward_model, reward_model.terms.warm
    path: Path  # its folder in the models cache
    config: object  # its model config (DictConfig)
    choice: str | None  # the needing command's choice of that config group (policy=sft_smollm2), or None
    cache_dir: str | None
    arms: tuple[str, ...]  # the arms whose jobs need it


def compose_command(name: str, overrides: list[str]):
    """A command's config (`train`, `front`) with `overrides`, Hydra's node included, composed by the running
    Hydra app's config loader (the study command's)."""
    from hydra import compose

    return compose(name, overrides=overrides, return_hydra_config=True)


def needed_models(study, extra: list[str]) -> list[Needed]:
    """Every model that the train and front commands of the study's jobs build on first use, once each, in the order
    the jobs need them; built as a command that chose its config builds it (`reward_model=minilm_rt_warm`, rather
    than as a sum's term `reward_model.terms.warm`, which has no choice of its own)."""
    first = {}
    for job in study_jobs(study):
        if job.reward is None:
            first.setdefault(job.arm, job)
    found: dict[Path, Needed] = {}
    for arm, job in first.items():
        for command, overrides in (("train", job.train), ("front", job.front)):
            if overrides is None:
                continue
            cfg = compose_command(command, [*overrides, *extra])
            choices = cfg.hydra.runtime.choices
            models = {"policy": cfg.policy, **classifier_configs(cfg.reward_model)}
            for key, model in models.items():
                if not model.get("build"):
                    continue
                path = Path(str(model.name_or_path)).expanduser()
                new = Needed(key, path, model, choices.get(key), cfg.paths.cache_dir, (arm,))
                if path in found:
                    old = found[path]
                    new = (old if old.choice is not None or new.choice is None else new)._replace(
                        arms=tuple(dict.fromkeys((*old.arms, arm))))
                found[path] = new
    return list(found.values())


def describe_needed(models: list[Needed]) -> str:
    """One line per model: cached or missing, its folder, the arms that need it."""
    if not models:
        return "the study's jobs need no model built on first use"
    return "\n".join(f"{'cached ' if m.path.exists() else 'missing'}  {m.key:<26}  {m.path}  (arms: {', '.join(m.arms)})"
                     for m in models)


def build(cfg) -> dict:
    """List the models the study's jobs need, then build the missing ones, one after the other."""
    models = needed_models(cfg.study, [str(e) for e in cfg.extra or []])
    print(describe_needed(models), flush=True)
    built = []
    for m in models:
        if not m.path.exists():
            log.info("building %s at %s (needed by arms %s)", m.key, m.path, ", ".join(m.arms))
            ensure_model(m.key, m.config, m.cache_dir, m.choice)
            built.append(str(m.path))
    print(f"built {len(built)} model{'s' * (len(built) != 1)}; every model the jobs need is in the models cache"
          if built else "nothing to build: every model the jobs need is in the models cache", flush=True)
    return {"needed": len(models), "built": len(built)}
