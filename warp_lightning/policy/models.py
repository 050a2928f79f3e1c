"""Loading and saving causal LM policies: tokenizer (left padding), model, weights <-> Hugging Face folder.

GPT-2 has absolute positions: with left padding every forward must take `position_ids` from the
attention mask (cumsum - 1), the way `generate()` does, or scoring log-probs drift from the sampling
distribution (WARP.md, pitfalls). `position_ids_from_mask` is used by sampling and scoring alike.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.activations import NewGELUActivation

from warp_lightning import UserError
from warp_lightning.algo.merging import StateDict
from warp_lightning.utils.io import save_hf_folder


def load_tokenizer(name_or_path: str | Path):
    tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError(f"policy.name_or_path={str(name_or_path)!r}: its tokenizer has neither a pad nor an "
                            "eos token; add a pad_token to its tokenizer_config.json")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_causal_lm(name_or_path: str | Path, dtype: torch.dtype = torch.float32):
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.eos_token_id
    return fuse_gelu(model)


def fuse_gelu(model):
    """Swap GPT-2's `gelu_new` (eight element-wise passes written in Python) for PyTorch's one-kernel GELU of
    the same tanh formula: equal up to float rounding, and a fifth less time in a small model's forward."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, torch.nn.GELU(approximate="tanh"))
    return model


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def model_from_state(skeleton, state: dict[str, torch.Tensor]):
    model = copy.deepcopy(skeleton)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def save_policy(skeleton, state: dict[str, torch.Tensor], tokenizer, path: Path) -> Path:
    """A Hugging Face folder (weights + tokenizer), written atomically."""
    model = model_from_state(skeleton, state)

    return save_hf_folder(path, model, tokenizer)


def load_state(folder: Path) -> StateDict:
    return load_causal_lm(folder).state_dict()
