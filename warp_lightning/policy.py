"""Causal LM policies: loading, left-padded batches, fast sampling and completion log-probs.

GPT-2 has absolute positions: with left padding every forward must take `position_ids` from the
attention mask (cumsum - 1), the way `generate()` does, or scoring log-probs drift from the sampling
distribution (WARP.md, pitfalls). Both `sample` and `completion_logprobs` below do so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from warp_lightning import UserError
from warp_lightning.rl import entropy_from_logprobs

log = logging.getLogger(__name__)


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
    return model


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row by inverse-CDF sampling: one uniform per row, cumsum + searchsorted.

    Same distribution as torch.multinomial, ~25x cheaper on CPU (WARP.md, pitfalls).
    """
    cdf = _KERNELS["cdf"](logits, temperature)
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


@dataclass
class Rollout:
    """Prompts (left-padded) followed by sampled completions (right-padded after EOS)."""

    input_ids: torch.Tensor  # [B, Lp + Lc]
    attention_mask: torch.Tensor  # [B, Lp + Lc]
    prompt_len: int  # Lp: completions start at this column for every row
    completion_mask: torch.Tensor  # [B, Lc], 1 up to and including EOS

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]


@torch.no_grad()
def sample(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    generator: torch.Generator | None = None,
    stop_at_eos: bool = True,
) -> Rollout:
    """Sample completions with a KV cache into preallocated buffers; stop rows at EOS."""
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    out_ids = torch.full((batch, prompt_len + max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    out_ids[:, :prompt_len] = input_ids
    mask = torch.zeros_like(out_ids)
    mask[:, :prompt_len] = attention_mask
    completion_mask = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=device)
    alive = torch.ones(batch, dtype=torch.bool, device=device)

    cache = DynamicCache()
    step_ids = input_ids
    positions = position_ids_from_mask(attention_mask)
    n_new = 0
    for t in range(max_new_tokens):
        out = model(
            input_ids=step_ids,
            attention_mask=mask[:, : prompt_len + t],
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        token = sample_tokens(out.logits[:, -1], temperature, generator)
        token = torch.where(alive, token, torch.full_like(token, pad_token_id))
        col = prompt_len + t
        out_ids[:, col] = token
        mask[:, col] = alive.long()  # tokens after EOS are padding: masked out everywhere
        completion_mask[:, t] = alive.long()
        n_new = t + 1
        if stop_at_eos and eos_token_id is not None:
            alive &= token != eos_token_id
            if not alive.any():
                break
        step_ids = token[:, None]
        positions = positions[:, -1:] + 1
    keep = prompt_len + n_new
    return Rollout(out_ids[:, :keep], mask[:, :keep], prompt_len, completion_mask[:, :n_new])


def _sampling_cdf(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=-1).cumsum(-1)


def _lse_and_target(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lf = logits if logits.dtype == torch.float64 else logits.float()
    return torch.logsumexp(lf, -1), lf.gather(-1, targets[:, None]).squeeze(-1)


def _grad_logits(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, grad_out: torch.Tensor):
    # d logp_i / d logits_i = onehot(y_i) - softmax(logits_i)
    lf = logits if logits.dtype == torch.float64 else logits.float()
    grad = (torch.exp(lf - lse[:, None]) * (-grad_out)[:, None]).to(logits.dtype)
    grad[torch.arange(len(targets), device=grad.device), targets] += grad_out.to(logits.dtype)
    return grad


# The passes over [rows, vocabulary] logits, fused by torch.compile into one read each (on CPU ~10x
# faster than eager for the log-prob passes, ~2x for the sampling CDF); `use_compiled_kernels(False)`
# keeps them eager.
_EAGER = {"lse": _lse_and_target, "grad": _grad_logits, "cdf": _sampling_cdf}
_KERNELS = dict(_EAGER)


def use_compiled_kernels(enabled: bool) -> None:
    for name, fn in _EAGER.items():
        _KERNELS[name] = torch.compile(fn, dynamic=True) if enabled else fn


class _LinearLogprob(torch.autograd.Function):
    """log softmax(h W^T)[y] without keeping the [N, V] log-softmax for backward.

    The vocabulary projection dominates a small LM's step; this runs its matmuls in `dtype` (bf16 under
    autocast) and the log-sum-exp in float32, and keeps only the (bf16) logits for backward.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, dtype):
        hb, wb = h.to(dtype), weight.to(dtype)
        logits = hb @ wb.T
        lse, target_logit = _KERNELS["lse"](logits, targets)
        ctx.save_for_backward(hb, wb, targets, lse, logits)
        ctx.in_dtypes = (h.dtype, weight.dtype)
        return target_logit - lse

    @staticmethod
    def backward(ctx, grad_out):
        hb, wb, targets, lse, logits = ctx.saved_tensors
        grad_logits = _KERNELS["grad"](logits, lse, targets, grad_out.to(lse.dtype))
        grad_h = (grad_logits @ wb).to(ctx.in_dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_w = (grad_logits.T @ hb).to(ctx.in_dtypes[1]) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None


def linear_logprob(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(h @ weight.T)[targets] in float32, matmuls in the autocast dtype when autocast is on."""
    kind = h.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else h.dtype
    with torch.autocast(kind, enabled=False):
        return _LinearLogprob.apply(h, weight, targets, dtype)


def completion_logprobs(
    model, rollout: Rollout, entropy_stride: int = 0, full: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token log pi(y_t | x, y_<t) of the completion tokens, in float32.

    The LM head runs only at completion positions that count (mask = 1): at these sizes the
    vocabulary projection is most of the arithmetic. Returns (token_logprobs [B, Lc], the mean
    full-vocabulary entropy over every `entropy_stride`-th counted token (None if 0; a subsample,
    since it is for logging), and with `full=True` the log-probs [N_valid, V] over the vocabulary).
    """
    hidden = model.base_model(
        input_ids=rollout.input_ids,
        attention_mask=rollout.attention_mask,
        position_ids=position_ids_from_mask(rollout.attention_mask),
    ).last_hidden_state
    lp = rollout.prompt_len
    # hidden state at column j predicts the token at column j + 1
    keep = rollout.completion_mask.bool()
    h = hidden[:, lp - 1 : -1][keep]
    targets = rollout.completion_ids[keep]
    head = model.get_output_embeddings()
    token_lp = torch.zeros(keep.shape, dtype=torch.float32, device=h.device)
    logprobs = entropy = None
    if full or getattr(head, "bias", None) is not None:
        logprobs = torch.log_softmax(head(h).float(), dim=-1)
        token_lp[keep] = logprobs.gather(-1, targets[:, None]).squeeze(-1)
    else:
        token_lp[keep] = linear_logprob(h, head.weight, targets)
    if entropy_stride:
        with torch.no_grad():
            sub = logprobs[::entropy_stride] if logprobs is not None else None
            if sub is None:
                sub = torch.log_softmax(head(h[::entropy_stride].detach()).float(), dim=-1)
            entropy = entropy_from_logprobs(sub).mean()
    return token_lp, entropy, logprobs
