"""The offline SFT stage: a small GPT-2 trained from scratch on movie reviews.

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
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning.data.assets import fetch
from warp_lightning.data.prompts import left_pad
from warp_lightning.data.texts import load_texts
from warp_lightning.policy.models import load_tokenizer
from warp_lightning.policy.sampling import sample
from warp_lightning.utils.io import save_hf_folder
from warp_lightning.utils.loggers import build_logger
from warp_lightning.utils.paths import cfg_output_dir

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
    def __init__(self, model, lr: float, warmup_steps: int, total_steps: int, weight_decay: float = 0.1):
        super().__init__()
        self.model = model
        self.lr, self.warmup_steps, self.total_steps, self.weight_decay = lr, warmup_steps, total_steps, weight_decay

    def training_step(self, batch, _):
        loss = self.model(input_ids=batch, labels=batch).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        self.log("val/loss", self.model(input_ids=batch, labels=batch).loss, prog_bar=True)

    def configure_optimizers(self):
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, betas=(0.9, 0.95))
        warm, total = max(1, self.warmup_steps), max(1, self.total_steps)

        def schedule(step: int) -> float:  # linear warm-up, cosine decay to 10%
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.no_grad()
def sample_continuations(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:

    ids, mask = left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id)
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
    tokenizer = load_tokenizer(fetch("gpt2_tokenizer", cache=Path(cfg.paths.cache_dir)))
    train_texts: list[str] = []
    for name in s.corpus:
        split = "train" if name in ("reviews", "rt_snippets") else None
        train_texts += list(load_texts(name, split, cache=cfg.paths.cache_dir)["text"])
    val_texts = list(load_texts("reviews", "test", cache=cfg.paths.cache_dir)["text"])
    train_blocks = pack_blocks(train_texts, tokenizer, s.context)
    val_blocks = pack_blocks(val_texts, tokenizer, s.context)[: s.max_val_blocks]
    log.info("SFT corpus: %d train blocks, %d val blocks of %d tokens", len(train_blocks), len(val_blocks), s.context)

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=max(s.n_positions, s.context), n_embd=s.n_embd, n_layer=s.n_layer,
                        n_head=s.n_head, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.eos_token_id, activation_function="gelu_pytorch_tanh",
                        resid_pdrop=s.dropout, embd_pdrop=s.dropout, attn_pdrop=s.dropout)
    model = GPT2LMHeadModel(config)
    module = CausalLMModule(model, s.lr, s.warmup_steps, s.max_steps)
    out_dir = Path(cfg_output_dir())
    trainer = L.Trainer(max_steps=s.max_steps, accelerator=cfg.trainer.accelerator, devices=1,
                        precision=s.precision, logger=build_logger(cfg.logger, out_dir, "sft"),
                        enable_checkpointing=False, enable_progress_bar=cfg.trainer.enable_progress_bar,
                        log_every_n_steps=10, val_check_interval=min(s.val_every, s.max_steps),
                        check_val_every_n_epoch=None, num_sanity_val_steps=0, gradient_clip_val=1.0,
                        limit_val_batches=s.limit_val_batches)
    g = torch.Generator().manual_seed(s.seed)
    trainer.fit(module, DataLoader(train_blocks, batch_size=s.batch_size, shuffle=True, generator=g),
                DataLoader(val_blocks, batch_size=s.batch_size))

    model = module.model.float().eval()
    with torch.no_grad():
        losses = [model(input_ids=b, labels=b).loss.item() for b in val_blocks.split(s.batch_size)]
    metrics = {
        "val_perplexity": math.exp(sum(losses) / len(losses)),
        "unigram_perplexity": unigram_perplexity(train_blocks, val_blocks, len(tokenizer)),
        "train_tokens": int(train_blocks.numel()),
        "tokens_seen": int(trainer.global_step * s.batch_size * s.context),
        "steps": int(trainer.global_step),
        "parameters": sum(p.numel() for p in model.parameters()),
        "samples": sample_continuations(model, tokenizer, list(s.sample_prompts), 40, s.seed),
        "seconds": round(time.time() - started, 1),
        "saved_to": str(cfg.save_to),
    }

    save_hf_folder(cfg.save_to, model, tokenizer)
    log.info("SFT policy saved to %s (val perplexity %.1f vs unigram %.1f)", cfg.save_to,
             metrics["val_perplexity"], metrics["unigram_perplexity"])
    return metrics
