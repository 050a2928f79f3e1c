"""WARM (Ramé et al. 2024, WARP.md "Neighbours of WARP"): M Bradley-Terry reward models from one shared start,
averaged in weight space into the reward model that RL uses.

As the paper trains them (LP-FT): the score head is fitted **once** on the frozen encoder (linear probing), and
every member fine-tunes everything from that one probed model, so that the members share their start and stay
linearly mode-connected (their average is a good model). Members differ by seed and data order, and by learning
rate and dropout when `ensemble_lrs` / `ensemble_dropouts` list them (`minilm_rt_warm` does, as the paper). The
average is `algo.merging.linear` with lam=None, then centred as a single reward model is (its head's bias shifted
so that balanced texts score 0 on average: the mean of centred members is not centred). `metrics.json` compares
every member, the weight average and the prediction average (the mean of the members' scores), and, with
`noise_check`, the same under flipped training labels: how often each memorises the flipped pairs. How one member
is trained, calibrated and evaluated is reward/training.py's (handed in as a `Stage`: training.py imports this
module).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification

from warp_lightning.algo.merging import linear
from warp_lightning.reward.commands import REWARD
from warp_lightning.reward.scorer import RewardModel
from warp_lightning.runtime.resume import StopCheckpoint, check_same_config
from warp_lightning.utils.io import save_hf_folder
from warp_lightning.utils.paths import cfg_output_dir
from warp_lightning.utils.precision import autocast
from warp_lightning.utils.trainer import log_device, trainer_device, trainer_precision

log = logging.getLogger(__name__)

TRAINED = "warm_trained.json"  # in a member's (or the probed start's) folder: what trained it
SEED_STRIDE = 1000  # member k trains with seed + 1000 k: apart from the seeds of neighbouring single runs


class Stage(NamedTuple):
    """What WARM needs from the single-model stage (reward/training.py)."""

    fit: Callable  # (cfg, model, tokenizer, train_pairs, val_pairs, out_dir, stop, name) -> fitted Trainer
    steps: Callable  # (reward_training, number of pairs) -> fine-tuning steps
    center: Callable  # (model, tokenizer, texts, max_length) -> the bias offset removed
    evaluate: Callable  # (scorer, cfg, val_pairs) -> {"val_pair_accuracy": ..., "<eval set>_accuracy": ...}
    pair_accuracy: Callable  # (scorer, pairs, max_length) -> fraction of pairs scored chosen > rejected


class Member(NamedTuple):
    seed: int
    lr: float
    dropout: float | None  # None: the model's own


def member_settings(tcfg, k: int) -> Member:
    """Member k's seed (derived from `seed`), and its learning rate and dropout (the lists cycled over members)."""
    lrs, dropouts = tcfg.get("ensemble_lrs"), tcfg.get("ensemble_dropouts")
    return Member(int(tcfg.seed) + SEED_STRIDE * k, float(lrs[k % len(lrs)]) if lrs else float(tcfg.lr),
                  float(dropouts[k % len(dropouts)]) if dropouts else None)


def probe_steps(probe, fine_tuning: int) -> int:
    """`probe`: an integer (steps) or a float (that fraction of the `fine_tuning` steps, at least one if > 0)."""
    if isinstance(probe, float):
        return max(1, round(probe * fine_tuning)) if probe > 0 else 0
    return int(probe)


def flip_pairs(pairs, fraction: float, seed: int):
    """(pairs with round(fraction n) of them swapped chosen <-> rejected, chosen at random by `seed`; the swapped
    pairs alone, as the corrupted labels state them)."""
    n = len(pairs)
    flipped = sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:round(fraction * n)].tolist())
    chosen, rejected = list(pairs["chosen"]), list(pairs["rejected"])
    for i in flipped:
        chosen[i], rejected[i] = rejected[i], chosen[i]
    swapped = pairs.from_dict({"chosen": chosen, "rejected": rejected}, features=pairs.features)
    return swapped, swapped.select(flipped)


def weight_average(theta_init: dict, members: list[dict]) -> dict:
    """WARM: the uniform weight average of the members' state dicts (the linear merge, lam=None)."""
    return linear(theta_init, members, lam=None)


def set_dropout(model: torch.nn.Module, p: float | None) -> None:
    """Every `nn.Dropout` of `model` drops with probability `p` (None: unchanged)."""
    if p is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = p


class CachedScores:
    """A member's scores, computed once per (texts, max_length): its own figures and the prediction average
    share them."""

    def __init__(self, scorer: RewardModel):
        self.scorer, self.max_length, self._scores = scorer, scorer.max_length, {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        key = (self.max_length, tuple(texts))
        if key not in self._scores:
            self.scorer.max_length = self.max_length
            self._scores[key] = self.scorer(texts)
        return self._scores[key]


class PredictionAverage:
    """The ensemble in prediction space, WARM's baseline: the mean of the members' scores (M forward passes)."""

    def __init__(self, scorers: list[CachedScores]):
        self.scorers, self.max_length = scorers, scorers[0].max_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        for s in self.scorers:
            s.max_length = self.max_length
        return torch.stack([s(texts) for s in self.scorers]).mean(0)


class Trained(NamedTuple):
    """What trained a saved member (or the probed start), written into its folder with it (`save_hf_folder`'s
    parts, one atomic write) and compared when an interrupted run reads it back: a folder of another config is
    refused rather than averaged with members of this one; its steps and offset come back with it."""

    config: dict  # the resolved config it trained with
    figures: dict  # {"steps": ..., "bias_offset": ...}

    def save_pretrained(self, folder) -> None:
        (Path(folder) / TRAINED).write_text(json.dumps({"config": self.config, **self.figures}, sort_keys=True))


def read_back(path: Path, config: dict) -> tuple[torch.nn.Module, dict]:
    """A saved member or probed start (`path`) and its figures, once its config is checked against `config` (but
    for REWARD.resume's keys); a folder saved before they kept their config is read back unchecked, said so."""
    record = path / TRAINED
    if record.exists():
        saved = json.loads(record.read_text())
        check_same_config(saved.pop("config"), config, path, REWARD.resume)
    else:
        saved = {}
        log.warning("WARM: %s keeps no record of its config (saved by an earlier version): read back unchecked", path)
    log.info("WARM: %s is saved; reading it back", path)
    return AutoModelForSequenceClassification.from_pretrained(path), saved


def linear_probe(cfg, stage: Stage, model, tokenizer, train_pairs, val_pairs, out_dir: Path,
                 name: str) -> tuple[int, StopCheckpoint | None]:
    """Fit the score head alone (the encoder, `model.base_model`, frozen) for `probe_steps`, at `probe_lr` without
    warm-up: the steps taken, and the probe's checkpoint (to let go once the probed model is saved)."""
    tcfg = cfg.reward_training
    steps = probe_steps(tcfg.probe_steps, stage.steps(tcfg, len(train_pairs)))
    if steps == 0:
        return 0, None
    pcfg = OmegaConf.merge(cfg, {"reward_training": {"max_steps": steps, "warmup_steps": 0, "lr": tcfg.probe_lr}})
    encoder = model.base_model.requires_grad_(False)
    try:
        stop = StopCheckpoint(out_dir / "checkpoints" / f"{name}_probe.ckpt",
                              config=OmegaConf.to_container(pcfg, resolve=True), may_change=REWARD.resume)
        trainer = stage.fit(pcfg, model, tokenizer, train_pairs, val_pairs, out_dir, stop, f"{name}_probe")
    finally:
        encoder.requires_grad_(True)
    return int(trainer.global_step), stop


def probed_start(cfg, stage: Stage, theta_init, tokenizer, train_pairs, val_pairs, folder: Path,
                 out_dir: Path) -> tuple[torch.nn.Module, int | None]:
    """The one linear probe every member starts from (seed `reward_training.seed`), saved to `folder/probed` (read
    back when an interrupted run saved it): (the probed model, its probe steps; None when read back)."""
    path, config = folder / "probed", OmegaConf.to_container(cfg, resolve=True)
    if (path / "config.json").exists():
        model, saved = read_back(path, config)
        return model, saved.get("steps")
    model = copy.deepcopy(theta_init)
    L.seed_everything(int(cfg.reward_training.seed), workers=True)
    steps, stop = linear_probe(cfg, stage, model, tokenizer, train_pairs, val_pairs, out_dir, f"{folder.name}_probed")
    save_hf_folder(path, model, tokenizer, Trained(config, {"steps": steps}))
    if stop is not None:
        stop.done()  # only now: a kill before the save resumes the probe from its checkpoint
    return model, steps


def train_member(cfg, stage: Stage, start, tokenizer, train_texts, train_pairs, val_pairs, k: int,
                 folder: Path, out_dir: Path) -> dict:
    """Member k fine-tuned from a copy of `start` (the shared probed model), calibrated, saved to
    `folder/member_k` (a member already there, from an interrupted run, is read back instead). Its settings and
    steps."""
    tcfg, s = cfg.reward_training, member_settings(cfg.reward_training, k)
    path, name = folder / f"member_{k}", f"{folder.name}_member_{k}"
    info = {"seed": s.seed, "lr": s.lr, "dropout": s.dropout, "path": str(path)}
    mcfg = OmegaConf.merge(cfg, {"reward_training": {"seed": s.seed, "lr": s.lr}})
    config = OmegaConf.to_container(mcfg, resolve=True)
    if (path / "config.json").exists():
        model, saved = read_back(path, config)
        return {**info, "model": model, **saved}
    model = copy.deepcopy(start)
    set_dropout(model, s.dropout)
    L.seed_everything(s.seed, workers=True)  # the member's dropout noise
    stop = StopCheckpoint(out_dir / "checkpoints" / f"{name}.ckpt", config=OmegaConf.to_container(mcfg, resolve=True),
                          may_change=REWARD.resume)
    trainer = stage.fit(mcfg, model, tokenizer, train_pairs, val_pairs, out_dir, stop, name)
    device, precision = trainer_device(cfg.trainer), trainer_precision(cfg.trainer)
    model = model.float().eval().to(device)
    with autocast(precision, device):
        offset = stage.center(model, tokenizer, list(train_texts["text"]), tcfg.max_length)
    figures = {"steps": int(trainer.global_step), "bias_offset": offset}
    save_hf_folder(path, model.cpu(), tokenizer, Trained(config, figures))
    stop.done()
    return {**info, "model": model, **figures}


def train_ensemble(cfg, stage: Stage, theta_init, tokenizer, train_texts, train_pairs, val_pairs,
                   folder: Path, out_dir: Path) -> tuple[list[dict], int]:
    """The shared linear probe, then the members fine-tuned from it: (the members, the probe's steps)."""
    start, probed = probed_start(cfg, stage, theta_init, tokenizer, train_pairs, val_pairs, folder, out_dir)
    members = [train_member(cfg, stage, start, tokenizer, train_texts, train_pairs, val_pairs, k, folder, out_dir)
               for k in range(cfg.reward_training.ensemble)]
    return members, probed


def compare(cfg, stage: Stage, theta_init, members: list[dict], tokenizer, train_texts, val_pairs,
            flipped=None) -> dict:
    """The figures of every member, of their weight average (centred) and of their prediction average (and with
    `flipped`, the training pairs whose labels were flipped, `memorised`: the fraction of them scored as flipped).
    Also returns the weight average itself, under "model", and the offset its centring removed."""
    tcfg = cfg.reward_training
    device, precision = trainer_device(cfg.trainer), trainer_precision(cfg.trainer)
    average = copy.deepcopy(theta_init)
    average.load_state_dict(weight_average(theta_init.state_dict(), [m["model"].state_dict() for m in members]))
    average = average.float().eval().to(device)
    with autocast(precision, device):
        offset = stage.center(average, tokenizer, list(train_texts["text"]), tcfg.max_length)
    scorers = [CachedScores(RewardModel(m["model"].float().to(device), tokenizer, sigmoid=False,
                                        max_length=tcfg.max_length)) for m in members]
    averaged = RewardModel(average.float().to(device), tokenizer, sigmoid=False, max_length=tcfg.max_length)

    def figures(scorer, name: str) -> dict:
        started = time.time()
        out = stage.evaluate(scorer, cfg, val_pairs)
        if flipped is not None:
            out["memorised"] = stage.pair_accuracy(scorer, flipped, tcfg.max_length)
        done.append(name)  # minutes each on one CPU thread: say where it stands
        log.info("WARM: %s evaluated in %.0f s (%d of %d models)", name, time.time() - started, len(done),
                 len(members) + 2)
        return out

    done: list[str] = []
    with autocast(precision, device):
        result = {"members": [{**{k: v for k, v in m.items() if k != "model"}, **figures(s, f"member {k + 1}")}
                              for k, (m, s) in enumerate(zip(members, scorers, strict=True))],
                  "weight_average": figures(averaged, "the weight average"),
                  "prediction_average": figures(PredictionAverage(scorers), "the prediction average")}
    for m in members:
        m["model"].cpu()
    result["weight_average"]["bias_offset"] = offset
    return {**result, "model": average.cpu()}


def run_ensemble(cfg, stage: Stage, theta_init, tokenizer, train_texts, train_pairs, val_pairs) -> dict:
    """`reward reward_training.ensemble=M`: the shared probed start and the members (`members/probed/`,
    `members/member_k/` in the run folder), their weight average (centred) saved to `save_to`, and (`noise_check`) a second ensemble on flipped labels (`noise_check/`)."""
    tcfg, started = cfg.reward_training, time.time()
    out_dir = Path(cfg_output_dir())
    log_device(cfg.trainer)
    theta_init = theta_init.float()
    pairs, flipped = (flip_pairs(train_pairs, tcfg.label_noise, tcfg.seed) if tcfg.get("label_noise")
                      else (train_pairs, None))
    members, probed = train_ensemble(cfg, stage, theta_init, tokenizer, train_texts, pairs, val_pairs,
                                     out_dir / "members", out_dir)
    found = compare(cfg, stage, theta_init, members, tokenizer, train_texts, val_pairs, flipped)
    average = found.pop("model")
    metrics = {**found["weight_average"], "ensemble": len(members), "probe_steps": probed, **found}
    if tcfg.get("noise_check"):
        noisy, noisy_flipped = flip_pairs(train_pairs, tcfg.noise_check, tcfg.seed)
        noisy_members, _ = train_ensemble(cfg, stage, theta_init, tokenizer, train_texts, noisy, val_pairs,
                                          out_dir / "noise_check", out_dir)
        noise = compare(cfg, stage, theta_init, noisy_members, tokenizer, train_texts, val_pairs, noisy_flipped)
        noise.pop("model")
        metrics["label_noise"] = {"fraction": tcfg.noise_check, "flipped_pairs": len(noisy_flipped), **noise}
    save_hf_folder(cfg.save_to, average, tokenizer)
    metrics.update(train_pairs=len(train_pairs), val_pairs=len(val_pairs), seconds=round(time.time() - started, 1),
                   saved_to=str(cfg.save_to), members_dir=str(out_dir / "members"))
    log.info("WARM: the weight average of %d members saved to %s: %s", len(members), cfg.save_to,
             {k: v for k, v in metrics.items() if not isinstance(v, list | dict)})
    return metrics
