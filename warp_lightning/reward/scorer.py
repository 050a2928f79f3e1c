"""The reward model at RL and evaluation time: decoded texts in, one float per text out."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from warp_lightning import UserError
from warp_lightning.data import assets


def resolve_pretrained(name: str, cache: str | Path | None = None) -> str:
    """An asset name of ASSETS.md (fetched on first use), a local folder, or a hub name."""
    if name in assets.ASSETS:
        return str(assets.fetch(name, cache=Path(cache) if cache else None))
    return name


class RewardModel:
    """Scores decoded texts with its own tokenizer; one float per text (optionally a sigmoid)."""

    def __init__(self, model, tokenizer, sigmoid: bool = True, max_length: int = 128, batch_size: int = 64):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.sigmoid, self.max_length, self.batch_size = sigmoid, max_length, batch_size

    @classmethod
    def from_pretrained(cls, name_or_path, device: str | torch.device = "cpu", **kwargs) -> RewardModel:
        if not Path(str(name_or_path)).exists() and str(name_or_path).startswith(("/", ".", "~")):
            raise UserError(f"reward_model.name_or_path: {name_or_path} does not exist; train it with "
                            "`python -m warp_lightning reward` or point to a folder")
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        model = AutoModelForSequenceClassification.from_pretrained(str(name_or_path))
        return cls(model.to(device).requires_grad_(False), tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            logits = self.model(**batch).logits.float()
            if logits.ndim != 2 or logits.shape[-1] != 1:
                raise UserError(f"reward model must output one score per text (num_labels=1), got logits "
                                f"of shape {tuple(logits.shape)}")
            scores.append(logits[:, 0])
        out = torch.cat(scores).cpu()
        return torch.sigmoid(out) if self.sigmoid else out


def load_reward_model(reward_cfg, device: str | torch.device = "cpu") -> RewardModel:
    """The reward model of `conf/reward_model/*.yaml` (a folder or hub name) on `device`."""
    return RewardModel.from_pretrained(reward_cfg.name_or_path, device=device, sigmoid=reward_cfg.sigmoid,
                                       max_length=reward_cfg.max_length, batch_size=reward_cfg.batch_size)
