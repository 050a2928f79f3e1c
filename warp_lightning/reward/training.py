"""Reward models: the Bradley-Terry training stage and the `RewardModel` used at RL time.

Offline, the MiniLM encoder of ASSETS.md learns from Rotten Tomatoes pairs; with `+experiment=imdb`,
`distilbert-base-cased` learns from IMDB pairs (the classic recipe). Both: chosen = a positive text,
rejected = a negative one, loss -log sigmoid(r(chosen) - r(rejected)).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from warp_lightning.data.texts import load_texts, preference_pairs
from warp_lightning.reward import warm
from warp_lightning.reward.commands import REWARD
from warp_lightning.reward.scorer import RewardModel, resolve_pretrained
from warp_lightning.runtime.resume import command_checkpoint
from warp_lightning.utils.io import save_hf_folder
from warp_lightning.utils.loggers import build_logger
from warp_lightning.utils.paths import cfg_output_dir
from warp_lightning.utils.precision import autocast
from warp_lightning.utils.progress import ProgressLog
from warp_lightning.utils.schedules import warmup_schedule
from warp_lightning.utils.trainer import build_trainer, log_device, trainer_device, trainer_precision

log = logging.getLogger(__name__)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r(chosen) - r(rejected)), averaged over pairs."""
    return -F.logsigmoid(chosen - rejected).mean()


class RewardModule(L.LightningModule):
    """Bradley-Terry fine-tuning of a scalar-head sequence classifier (`reward_training.optimizer`)."""

    def __init__(self, model, tokenizer, optimizer, max_length: int, warmup_steps: int, total_steps: int):
        super().__init__()
        self.model, self.tokenizer = model.train(), tokenizer  # from_pretrained returns eval mode: dropout on
        self.optimizer, self.max_length = optimizer, max_length
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def collate(self, rows: list[dict]) -> dict:
        texts = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def _pair_scores(self, batch):
        scores = self.model(**batch).logits[:, 0].float()
        return scores.chunk(2)

    def training_step(self, batch, _):
        chosen, rejected = self._pair_scores(batch)
        loss = bradley_terry_loss(chosen, rejected)
        self.log_dict({"train/loss": loss, "train/pair_accuracy": (chosen > rejected).float().mean()},
                      prog_bar=True, batch_size=chosen.shape[0])
        return loss

    def validation_step(self, batch, _):
        chosen, rejected = self._pair_scores(batch)
        self.log_dict({"val/loss": bradley_terry_loss(chosen, rejected),
                       "val/pair_accuracy": (chosen > rejected).float().mean()}, batch_size=chosen.shape[0])

    def configure_optimizers(self):
        opt = instantiate(self.optimizer)(self.model.parameters())
        return {"optimizer": opt, "lr_scheduler": warmup_schedule(opt, self.warmup_steps, self.total_steps, "linear")}


@torch.no_grad()
def center_scores(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 128) -> float:
    """Shift the scalar head's bias so balanced texts score 0 on average.

    Bradley-Terry only sees score differences, so the offset is arbitrary; centring makes the sign of
    the score a classifier and the sigmoid of a balanced sample about 0.5.
    """
    head = next(m for m in reversed(list(model.modules()))
                if isinstance(m, torch.nn.Linear) and m.out_features == 1)
    offset = RewardModel(model, tokenizer, False, max_length, batch_size)(texts).mean().item()
    head.bias -= offset
    return offset


def length_ordered(scorer, texts: list[str]) -> torch.Tensor:
    """`scorer(texts)`, the texts handed over shortest first, so that each batch pads to a similar length (1.35x
    faster on Pang & Lee's sentences, benchmarks/reward_eval.py in benchmarks/RESULTS.md), the scores back in the texts' order: the same scores
    up to float rounding (padding changes the matmuls' shapes, not what they compute). For the evaluation's
    figures only: RL's rewards and the centring keep their batches, so no model changes."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    scores = scorer([texts[i] for i in order])
    out = torch.empty_like(scores)
    out[torch.tensor(order, dtype=torch.long)] = scores
    return out


def sign_accuracy(scorer: RewardModel, texts: list[str], labels: list[int]) -> float:
    scores = length_ordered(scorer, texts)
    return ((scores > 0).long() == torch.tensor(labels)).float().mean().item()


def prepare(cfg):
    """Seeded: the base model with a fresh score head (WARM's shared start), its tokenizer, the training texts
    (calibration) and the train / held-out pairs."""
    rcfg, tcfg = cfg.reward_model, cfg.reward_training
    L.seed_everything(tcfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    base = resolve_pretrained(rcfg.base, cfg.paths.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    data_path = rcfg.get("train_data_path")  # a local copy of the data set (e.g. IMDB's parquet files)
    train_texts = load_texts(rcfg.train_data, "train", cache=cfg.paths.cache_dir, path=data_path)
    val_texts = load_texts(rcfg.train_data, "test", cache=cfg.paths.cache_dir, path=data_path)
    if tcfg.max_train_texts:
        train_texts = train_texts.shuffle(seed=tcfg.seed).select(range(min(len(train_texts), tcfg.max_train_texts)))
    if tcfg.max_val_texts:
        val_texts = val_texts.shuffle(seed=tcfg.seed).select(range(min(len(val_texts), tcfg.max_val_texts)))
    train_pairs = preference_pairs(train_texts, seed=tcfg.seed)
    val_pairs = preference_pairs(val_texts, seed=tcfg.seed)
    return model, tokenizer, train_texts, train_pairs, val_pairs


def fine_tuning_steps(tcfg, n_pairs: int) -> int:
    """`max_steps`, or (-1) `epochs` passes over the pairs."""
    return tcfg.max_steps if tcfg.max_steps > 0 else -(-n_pairs // tcfg.batch_size) * tcfg.epochs


def fit_bradley_terry(cfg, model, tokenizer, train_pairs, val_pairs, out_dir: Path, stop, name: str = "reward"):
    """Fine-tune `model` in place by `cfg.reward_training` (its seed orders the pairs; parameters that do not
    require grad stay as they are): the fitted Trainer. `stop`: the run's `StopCheckpoint`."""
    tcfg = cfg.reward_training
    total = fine_tuning_steps(tcfg, len(train_pairs))
    module = RewardModule(model, tokenizer, tcfg.optimizer, tcfg.max_length, tcfg.warmup_steps, total)
    train_dl = DataLoader(train_pairs, batch_size=tcfg.batch_size, shuffle=True, collate_fn=module.collate,
                          generator=torch.Generator().manual_seed(tcfg.seed))
    val_dl = DataLoader(val_pairs, batch_size=2 * tcfg.batch_size, collate_fn=module.collate)
    # the step count alone ends the fit (`total` is `epochs` passes unless max_steps is set), so that a run resumed
    # mid-epoch still reaches `total` steps (the interrupted epoch's data order restarts; Lightning's epoch count
    # would end it early)
    trainer = build_trainer(cfg.trainer, devices=1, num_nodes=1, strategy="auto", max_steps=total,
                            max_epochs=-1, logger=build_logger(cfg.logger, out_dir, name),
                            log_every_n_steps=10, val_check_interval=None, check_val_every_n_epoch=1,
                            gradient_clip_val=1.0, deterministic=True,
                            callbacks=[ProgressLog(tcfg.log_every, name, ("train/loss", "train/pair_accuracy")),
                                       stop])
    stop.fit(trainer, module, train_dl, val_dl, ckpt_path=stop.resume_from(trainer))
    return trainer


def run(cfg) -> dict:
    """`python -m warp_lightning reward`: train, calibrate, evaluate and save the reward model; with
    `reward_training.ensemble` > 1, WARM's members and their weight average (reward/warm.py)."""
    tcfg = cfg.reward_training
    started = time.time()
    model, tokenizer, train_texts, train_pairs, val_pairs = prepare(cfg)
    if tcfg.get("ensemble", 1) > 1:
        return warm.run_ensemble(cfg, WARM_STAGE, model, tokenizer, train_texts, train_pairs, val_pairs)
    out_dir = Path(cfg_output_dir())
    device, precision = trainer_device(cfg.trainer), trainer_precision(cfg.trainer)
    log_device(cfg.trainer)
    stop = command_checkpoint(out_dir, cfg, REWARD.resume)  # SIGTERM/SIGINT: a checkpoint at the end of the step, then stop
    trainer = fit_bradley_terry(cfg, model, tokenizer, train_pairs, val_pairs, out_dir, stop)
    model = model.float().eval().to(device)

    # scored in the precision RL will use (bf16 matmuls under autocast when training used them)
    with autocast(precision, device):
        offset = center_scores(model, tokenizer, list(train_texts["text"]), tcfg.max_length)
        scorer = RewardModel(model, tokenizer, sigmoid=False, max_length=tcfg.max_length)
        metrics = reward_metrics(scorer, cfg, val_pairs)
    metrics.update(train_pairs=len(train_pairs), val_pairs=len(val_pairs), steps=int(trainer.global_step),
                   bias_offset=offset, seconds=round(time.time() - started, 1), saved_to=str(cfg.save_to))

    save_hf_folder(cfg.save_to, model.cpu(), tokenizer)
    stop.done()
    log.info("reward model saved to %s: %s", cfg.save_to, metrics)
    return metrics


def reward_metrics(scorer, cfg, val_pairs) -> dict:
    """Held-out pair accuracy, and the sign accuracy on each of `eval_sets` (never trained on). `scorer`: a
    `RewardModel`, or anything scoring texts with a settable `max_length` (WARM's prediction average)."""
    tcfg = cfg.reward_training
    metrics = {"val_pair_accuracy": _pair_accuracy(scorer, val_pairs, tcfg.max_length)}
    for name in tcfg.eval_sets:
        texts = load_texts(name, None, cache=cfg.paths.cache_dir)
        if tcfg.max_eval_texts:
            texts = texts.shuffle(seed=0).select(range(min(len(texts), tcfg.max_eval_texts)))
        scorer.max_length = tcfg.eval_max_length
        metrics[f"{name}_accuracy"] = sign_accuracy(scorer, list(texts["text"]), list(texts["label"]))
    return metrics


def _pair_accuracy(scorer: RewardModel, pairs, max_length: int) -> float:
    scorer.max_length = max_length
    chosen, rejected = length_ordered(scorer, list(pairs["chosen"])), length_ordered(scorer, list(pairs["rejected"]))
    return (chosen > rejected).float().mean().item()


# what WARM (reward/warm.py) trains, calibrates and evaluates each member with
WARM_STAGE = warm.Stage(fit=fit_bradley_terry, steps=fine_tuning_steps, center=center_scores,
                        evaluate=reward_metrics, pair_accuracy=_pair_accuracy)
