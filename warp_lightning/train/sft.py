"""The offline SFT stage: a small GPT-2 trained from scratch on movie reviews, or (`sft.init`) a pretrained causal
LM such as SmolLM2-135M adapted to them (`+experiment=smollm2`), with held-out perplexity before and after.

It stands in for `lvwerra/gpt2-imdb` (GPT-2 fine-tuned on IMDB): same architecture, the real GPT-2
tokenizer of ASSETS.md, review-domain text. Saved with `save_pretrained` next to its tokenizer.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning.builds import ensure_model
from warp_lightning.data.assets import fetch
from warp_lightning.data.prompts import left_pad
from warp_lightning.data.texts import load_texts
from warp_lightning.policy.models import load_causal_lm, load_tokenizer
from warp_lightning.policy.sampling import sample
from warp_lightning.runtime.resume import command_checkpoint
from warp_lightning.train.commands import SFT
from warp_lightning.utils.io import save_hf_folder
from warp_lightning.utils.loggers import build_logger
from warp_lightning.utils.paths import cfg_output_dir
from warp_lightning.utils.progress import ProgressLog
from warp_lightning.utils.schedules import warmup_schedule
from warp_lightning.utils.trainer import build_trainer, log_device, trainer_device

log = logging.getLogger(__name__)


def pack_blocks(texts: list[str], tokenizer, block: int) -> torch.Tensor:
    """Concatenate texts separated by EOS and cut the stream into blocks of `block` tokens."""
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // block
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def unigram_perplexity(train: torch.Tensor, test: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of an add-one unigram model: the scale against which the LM's perplexity reads."""
    counts = torch.bincount(train.flatten(), minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[test.flatten()].mean().item())


class CausalLMModule(L.LightningModule):
    """Next-token cross-entropy; AdamW (`sft.optimizer`) without weight decay on biases and norms."""

    def __init__(self, model, optimizer, warmup_steps: int, total_steps: int, floor: float):
        super().__init__()
        self.model, self.optimizer = model, optimizer
        self.warmup_steps, self.total_steps, self.floor = warmup_steps, total_steps, floor

    def training_step(self, batch, _):
        loss = self.model(input_ids=batch, labels=batch).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        self.log("val/loss", self.model(input_ids=batch, labels=batch).loss, prog_bar=True)

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        make = instantiate(self.optimizer)
        opt = make([{"params": decay, "weight_decay": make.keywords.get("weight_decay", 0.0)},
                    {"params": no_decay, "weight_decay": 0.0}])
        return {"optimizer": opt, "lr_scheduler": warmup_schedule(opt, self.warmup_steps, self.total_steps,
                                                                  "cosine", self.floor)}


def scratch_gpt2(s, tokenizer) -> GPT2LMHeadModel:
    """The GPT-2 of `sft.n_layer`, `n_embd`, `n_head`, `n_positions`, `dropout`, initialised at random."""
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=max(s.n_positions, s.context), n_embd=s.n_embd, n_layer=s.n_layer,
        n_head=s.n_head, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, activation_function="gelu_pytorch_tanh", resid_pdrop=s.dropout,
        embd_pdrop=s.dropout, attn_pdrop=s.dropout))


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch_size: int, device) -> float:
    """exp of the mean next-token cross-entropy over `blocks` (held-out text)."""
    model = model.float().eval().to(device)
    losses = [model(input_ids=b.to(device), labels=b.to(device)).loss.item() for b in blocks.split(batch_size)]
    return math.exp(sum(losses) / len(losses))


@torch.no_grad()
def sample_continuations(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
    ids, mask = (t.to(model.device) for t in left_pad([tokenizer(p)["input_ids"] for p in prompts],
                                                       tokenizer.pad_token_id))
    rollout = sample(model.eval(), ids, mask, max_new_tokens, temperature=1.0,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     generator=torch.Generator().manual_seed(seed))
    return [p + tokenizer.decode(c[m.bool()], skip_special_tokens=True)
            for p, c, m in zip(prompts, rollout.completion_ids, rollout.completion_mask, strict=True)]


def run(cfg) -> dict:
    """`python -m warp_lightning sft`: train, measure held-out perplexity, save the policy folder."""
    s = cfg.sft
    started = time.time()
    L.seed_everything(s.seed, workers=True)
    init = s.get("init")
    if init:  # a pretrained model, with its own tokenizer (built first if it is an offline build, e.g. smollm2)
        ensure_model("sft.init", init, cfg.paths.cache_dir)
        tokenizer = load_tokenizer(init.name_or_path)
    else:
        tokenizer = load_tokenizer(fetch("gpt2_tokenizer", cache=Path(cfg.paths.cache_dir)))
    train_texts: list[str] = []
    for name in s.corpus:
        split = "train" if name in ("reviews", "rt_snippets") else None
        train_texts += list(load_texts(name, split, cache=cfg.paths.cache_dir)["text"])
    val_texts = list(load_texts("reviews", "test", cache=cfg.paths.cache_dir)["text"])
    train_blocks = pack_blocks(train_texts, tokenizer, s.context)
    val_blocks = pack_blocks(val_texts, tokenizer, s.context)[: s.max_val_blocks]
    log.info("SFT corpus: %d train blocks, %d val blocks of %d tokens", len(train_blocks), len(val_blocks), s.context)

    device = trainer_device(cfg.trainer)
    if init:
        model = load_causal_lm(init.name_or_path)
        init_perplexity = perplexity(model, val_blocks, s.batch_size, device)
        log.info("%s: held-out perplexity %.1f before SFT", init.name_or_path, init_perplexity)
        model.cpu()
    else:
        model, init_perplexity = scratch_gpt2(s, tokenizer), None
    module = CausalLMModule(model, s.optimizer, s.warmup_steps, s.max_steps, s.lr_floor)
    out_dir = Path(cfg_output_dir())
    log_device(cfg.trainer)
    stop = command_checkpoint(out_dir, cfg, SFT.resume)  # SIGTERM/SIGINT: a checkpoint at the end of the step, then stop
    trainer = build_trainer(cfg.trainer, devices=1, num_nodes=1, strategy="auto", max_steps=s.max_steps,
                            logger=build_logger(cfg.logger, out_dir, "sft"), log_every_n_steps=10,
                            val_check_interval=min(s.val_every, s.max_steps), check_val_every_n_epoch=None,
                            gradient_clip_val=1.0, limit_val_batches=s.limit_val_batches,
                            callbacks=[ProgressLog(s.log_every, "sft"), stop])
    g = torch.Generator().manual_seed(s.seed)
    stop.fit(trainer, module, DataLoader(train_blocks, batch_size=s.batch_size, shuffle=True, generator=g),
             DataLoader(val_blocks, batch_size=s.batch_size), ckpt_path=stop.resume_from(trainer))

    model = module.model.float().eval().to(device)
    metrics = {
        "val_perplexity": perplexity(model, val_blocks, s.batch_size, device),
        "init_val_perplexity": init_perplexity,  # the pretrained model's, before SFT (sft.init); null from scratch
        "init": str(init.name_or_path) if init else None,
        "unigram_perplexity": unigram_perplexity(train_blocks, val_blocks, len(tokenizer)),
        "train_tokens": int(train_blocks.numel()),
        "tokens_seen": int(trainer.global_step * s.batch_size * s.context),
        "steps": int(trainer.global_step),
        "parameters": sum(p.numel() for p in model.parameters()),
        "samples": sample_continuations(model, tokenizer, list(s.sample_prompts), 40, s.seed),
        "seconds": round(time.time() - started, 1),
        "saved_to": str(cfg.save_to),
    }

    save_hf_folder(cfg.save_to, model.cpu(), tokenizer)
    stop.done()
    log.info("SFT policy saved to %s (val perplexity %.1f vs unigram %.1f%s)", cfg.save_to,
             metrics["val_perplexity"], metrics["unigram_perplexity"],
             f"; {init_perplexity:.1f} before SFT" if init else "")
    return metrics
