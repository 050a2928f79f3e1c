"""Sampling completions: a KV cache into reserved room, prompts run once per k samples, inverse-CDF draws.

`sample` returns a `Rollout` (prompt + completion ids and masks); `decode_texts` turns it into what the
reward model reads. The vocabulary-sized arithmetic lives in `kernels`.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from warp_lightning.policy.kernels import (
    _f32,
    _matmul_dtype,
    _project,
    _reserved,
    _sample_slices,
    padded_vocab,
)
from warp_lightning.policy.models import position_ids_from_mask
from warp_lightning.policy.sharding import gathers_weights


def _param_versions(model) -> tuple[int, ...]:
    # every in-place change of a parameter (optimizer step, EMA, load_state_dict) bumps its version; a sharded
    # model's are its shards (`distributed.shard_model`)
    return tuple(p._version for p in getattr(model, "shards", None) or model.parameters())


@dataclass
class Rollout:
    """Prompts (left-padded) followed by sampled completions (right-padded after EOS)."""

    input_ids: torch.Tensor  # [B, Lp + Lc]
    attention_mask: torch.Tensor  # [B, Lp + Lc]
    prompt_len: int  # Lp: completions start at this column for every row
    completion_mask: torch.Tensor  # [B, Lc], 1 up to and including EOS
    # With `sample(..., keep_logits=True)`: the sampling pass's temperature-1 logits, token-major
    # [Lc, B, padded_vocab(V)] (extra columns -inf), and their log-sum-exp [B, Lc] in float32. They stand for
    # the sampler's own head in `completion_logprobs` while its weights are unchanged.
    logits: torch.Tensor | None = None
    logsumexp: torch.Tensor | None = None
    sampler: tuple | None = field(default=None, repr=False)  # (weakref to the model, its parameter versions)

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]

    def sampled_by(self, model) -> bool:
        """Whether `model` sampled this rollout, with no parameter changed in place since."""
        return self.sampler is not None and self.sampler[0]() is model and self.sampler[1] == _param_versions(model)


class _ReservedLayer(DynamicLayer):
    """A KV-cache layer writing each token into room reserved for the whole rollout, where `DynamicLayer`
    concatenates (copies) its whole cache at every token: an eighth of generation time at width 384."""
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            batch, heads, _, dim = key_states.shape
            self.room = key_states.new_empty((2, batch, heads, self.capacity, dim))
        stop = self.length + key_states.shape[-2]
        self.room[0, :, :, self.length : stop] = key_states
        self.room[1, :, :, self.length : stop] = value_states
        self.length = stop
        return self._views()

    def _views(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys, self.values = self.room[0, :, :, : self.length], self.room[1, :, :, : self.length]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.room = self.room[:, indices]
            self._views()


def _repeated_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first, group) when some rows repeat the row above them (the k samples of one prompt, prompt-major):
    `ids[first]` are the distinct rows and row i equals distinct row `group[i]`. None when none repeats."""
    if ids.shape[0] < 2 or ids.shape[1] == 0:
        return None
    repeat = (ids[1:] == ids[:-1]).all(-1) & (mask[1:] == mask[:-1]).all(-1)
    if not repeat.any():
        return None
    new = torch.cat([repeat.new_ones(1), ~repeat])
    return new.nonzero().squeeze(-1), new.long().cumsum(0) - 1


def _prompt_forward(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache):
    """Last hidden states of the prompts, filling `cache`; prompts repeated k times run once (then the cache
    is expanded), since at these sizes the k copies would be a third of a step's transformer work."""
    rows = _repeated_rows(ids, mask)
    if rows is None:
        return model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                                use_cache=True).last_hidden_state
    first, group = rows
    hidden = model.base_model(input_ids=ids[first], attention_mask=mask[first], position_ids=positions[first],
                              past_key_values=cache, use_cache=True).last_hidden_state
    cache.batch_select_indices(group)
    return hidden[group]


@gathers_weights(all_blocks=True)
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
    keep_logits: bool = False,
) -> Rollout:
    """Sample completions with a KV cache into preallocated buffers; stop rows at EOS.

    With `stop_at_eos=False` every row gets exactly `max_new_tokens` tokens (an EOS is kept as a token).
    With `keep_logits=True` the rollout keeps the sampling logits (max_new_tokens x B x V floats), so that
    `completion_logprobs` of this same model, before its weights change, skips its vocabulary projection.
    """
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    out_ids = torch.full((batch, prompt_len + max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    out_ids[:, :prompt_len] = input_ids
    mask = torch.zeros_like(out_ids)
    mask[:, :prompt_len] = attention_mask
    completion_mask = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=device)
    alive = torch.ones(batch, dtype=torch.bool, device=device)

    head = model.get_output_embeddings()
    dtype = _matmul_dtype(device.type, head.weight.dtype)
    weight = head.weight.to(dtype)
    bias = head.bias.to(dtype) if getattr(head, "bias", None) is not None else None
    vocab = weight.shape[0]
    shape = (max_new_tokens if keep_logits else 1, batch, padded_vocab(vocab))
    logits = _reserved(shape, dtype, device) if keep_logits else torch.empty(shape, dtype=dtype, device=device)
    logits[..., vocab:] = float("-inf")
    lse = torch.empty((max_new_tokens, batch), dtype=_f32(logits).dtype, device=device)

    cache = DynamicCache()
    cache.layer_class_to_replicate = functools.partial(_ReservedLayer, prompt_len + max_new_tokens)
    positions = position_ids_from_mask(attention_mask)
    hidden = _prompt_forward(model, input_ids, attention_mask, positions, cache)[:, -1]
    n_new = 0
    for t in range(max_new_tokens):
        step_logits = logits[t if keep_logits else 0]
        with torch.autocast(device.type, enabled=False):
            _project(hidden.to(dtype), weight, bias, step_logits)
        token, lse[t] = _sample_slices(step_logits, vocab, temperature, generator)
        token = torch.where(alive, token, pad_token_id)
        col = prompt_len + t
        out_ids[:, col] = token
        mask[:, col] = alive.long()  # tokens after EOS are padding: masked out everywhere
        completion_mask[:, t] = alive.long()
        n_new = t + 1
        if stop_at_eos and eos_token_id is not None:
            alive &= token != eos_token_id
            if not alive.any():
                break
        if n_new < max_new_tokens:
            positions = positions[:, -1:] + 1
            hidden = model.base_model(input_ids=token[:, None], attention_mask=mask[:, : col + 1],
                                      position_ids=positions, past_key_values=cache,
                                      use_cache=True).last_hidden_state[:, -1]
    keep = prompt_len + n_new
    rollout = Rollout(out_ids[:, :keep], mask[:, :keep], prompt_len, completion_mask[:, :n_new])
    if keep_logits:
        rollout.logits, rollout.logsumexp = logits[:n_new], lse[:n_new].T
        rollout.sampler = (weakref.ref(model), _param_versions(model))
    return rollout


def decode_texts(tokenizer, rollout) -> list[str]:
    """Prompt + completion as text (what the reward model reads), padding and EOS dropped."""
    return [tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            for ids, mask in zip(rollout.input_ids, rollout.attention_mask, strict=True)]
