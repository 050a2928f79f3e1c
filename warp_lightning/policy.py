"""Causal LM policies: loading, left-padded batches, fast sampling and completion log-probs.

GPT-2 has absolute positions: with left padding every forward must take `position_ids` from the
attention mask (cumsum - 1), the way `generate()` does, or scoring log-probs drift from the sampling
distribution (WARP.md, pitfalls). Both `sample` and `completion_logprobs` below do so.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.activations import NewGELUActivation
from transformers.cache_utils import DynamicLayer

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


def _uniforms(rows: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device):
    """[rows, 1] uniforms in [0, 1) from `generator` on its own device, then moved: a CPU generator (the training
    module's, saved in its checkpoints) draws the same stream for a model on any device."""
    where = generator.device if generator is not None else device
    return torch.rand(rows, 1, generator=generator, dtype=dtype, device=where).to(device)


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row by inverse-CDF sampling: one uniform per row, cumsum + searchsorted.

    Same distribution as torch.multinomial, ~25x cheaper on CPU (WARP.md, pitfalls).
    """
    cdf = _KERNELS["cdf"](logits, temperature)
    u = _uniforms(cdf.shape[0], generator, cdf.dtype, cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


# Vocabulary columns per slice of the head's projections h @ W^T: a slice's logits stay in cache while they
# are reduced. On 2 cores, against one [N, V] matmul: 2x faster sampling (64 rows, projection + sampler) and
# 1.4x faster log-sum-exp (2048 rows), at widths 128 and 384.
HEAD_CHUNK = 2048
# Bytes of a [rows, columns] slice of logits or softmax: at most 16 MiB, so that malloc recycles the slices
# instead of mapping fresh memory and page-faulting through it for each one.
SLICE_BYTES = 16 << 20


def padded_vocab(vocab: int) -> int:
    """The width of the logit buffers: the vocabulary rounded up to whole slices, the extra columns -inf."""
    return -(-vocab // HEAD_CHUNK) * HEAD_CHUNK


def _project(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out[:, :V] = h @ weight.T + bias, one vocabulary slice at a time; out's extra columns are left alone."""
    for start in range(0, weight.shape[0], HEAD_CHUNK):
        stop = min(start + HEAD_CHUNK, weight.shape[0])
        torch.mm(h, weight[start:stop].T, out=out[:, start:stop])
    if bias is not None:
        out[:, : weight.shape[0]] += bias
    return out


def _sample_slices(logits: torch.Tensor, vocab: int, temperature: float, generator: torch.Generator | None):
    """One token per row of softmax(logits / T) by inverse CDF in two levels, and the rows' log-sum-exp at T = 1.

    `logits` is [B, padded_vocab(V)]. One uniform per row picks a slice of HEAD_CHUNK columns from the
    slices' masses, then a column from that slice's own CDF: the distribution of `sample_tokens`, without
    writing and scanning a [B, V] cumsum.
    """
    rows = logits.shape[0]
    slices = logits.view(rows, -1, HEAD_CHUNK)
    mass, top, lse = _KERNELS["slice_mass"](slices, temperature)
    cum = mass.cumsum(-1)
    # u in (0, total]: u = 0 would pick the first column whatever its probability
    u = (1 - _uniforms(rows, generator, cum.dtype, cum.device)) * cum[:, -1:]
    j = torch.searchsorted(cum, u).clamp_(max=slices.shape[1] - 1)
    chosen = mass.gather(1, j).clamp_(min=torch.finfo(cum.dtype).tiny)
    cdf = _KERNELS["slice_cdf"](slices[torch.arange(rows, device=j.device), j[:, 0]], top, temperature)
    # u's offset into the chosen slice, rescaled to that slice's own cumsum (equal up to rounding)
    target = (u - (cum.gather(1, j) - chosen)).clamp_(min=0) * (cdf[:, -1:] / chosen)
    column = torch.searchsorted(cdf, target).clamp_(max=HEAD_CHUNK - 1)
    return (j * HEAD_CHUNK + column).squeeze(-1).clamp_(max=vocab - 1), lse


_RESERVE: list[torch.Tensor] = []  # the kept-logits buffer of the last `sample(..., keep_logits=True)`


def _reserved(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised buffer for kept logits, reusing the previous one once nothing views it any more.

    A fresh 400 MB buffer costs ~0.2 s of page faults per step on CPU (a tenth of a tiny model's step);
    the previous rollout and its graph are gone by the next step's sampling, so its memory is taken back.
    """
    numel = math.prod(shape)
    for buf in _RESERVE:
        # 2 users: `buf` and the temporary storage object; any rollout or graph still viewing it adds one
        if (buf.dtype == dtype and buf.device == device and buf.numel() >= numel
                and torch._C._storage_Use_Count(buf.untyped_storage()._cdata) == 2):
            return buf[:numel].view(shape)
    _RESERVE[:] = [torch.empty(numel, dtype=dtype, device=device)]
    return _RESERVE[0].view(shape)


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


def gathers_weights(fn=None, *, all_blocks: bool = False):
    """`fn(model, ...)` reads the model's weights outside `model.forward`. For a model sharded by
    `distributed.shard_model` it runs inside FSDP's forward hooks (`model.run_gathered`): the weights are
    gathered around the call and freed after it, or after backward when the result carries gradients (a gathered
    copy kept longer would miss the next optimizer or EMA update of the shards). With `all_blocks`, the blocks
    too stay gathered for the whole call (`distributed.blocks_kept`), for loops that run them once per token."""
    if fn is None:
        return functools.partial(gathers_weights, all_blocks=all_blocks)

    @functools.wraps(fn)
    def call(model, *args, **kwargs):
        if not hasattr(model, "run_gathered"):
            return fn(model, *args, **kwargs)
        from warp_lightning.distributed import blocks_kept

        with blocks_kept(model) if all_blocks else contextlib.nullcontext():
            out = model.run_gathered(fn, *args, **kwargs)
        if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in (out if isinstance(out, tuple) else ())):
            model.reshard()  # no backward to come (sampling, the anchor): free the gathered root weights now
        return out

    return call


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


def _f32(x: torch.Tensor) -> torch.Tensor:
    """float32, or float64 kept (the tests check the arithmetic in float64)."""
    return x if x.dtype == torch.float64 else x.float()


def _sampling_cdf(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=-1).cumsum(-1)


def _slice_mass(slices: torch.Tensor, temperature: float):
    """[B, S, C] logits -> (each slice's mass sum exp(l / T - top), top = the row max of l / T, the row's
    log-sum-exp at temperature 1)."""
    x = _f32(slices)
    scaled = x / temperature
    top = scaled.amax((1, 2))
    mass = torch.exp(scaled - top[:, None, None]).sum(-1)
    lse = top + mass.sum(-1).log() if temperature == 1 else torch.logsumexp(x.flatten(1), -1)
    return mass, top, lse


def _slice_cdf(logits: torch.Tensor, top: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.exp(_f32(logits) / temperature - top[:, None]).cumsum(-1)


def _logsumexp(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(_f32(logits), -1)


def _lse_and_target(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lf = _f32(logits)
    return torch.logsumexp(lf, -1), lf.gather(-1, targets[:, None]).squeeze(-1)


def _grad_logits(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, grad_out: torch.Tensor):
    # d logp_i / d logits_i = onehot(y_i) - softmax(logits_i)
    lf = _f32(logits)
    grad = (torch.exp(lf - lse[:, None]) * (-grad_out)[:, None]).to(logits.dtype)
    grad[torch.arange(len(targets), device=grad.device), targets] += grad_out.to(logits.dtype)
    return grad


def _scaled_softmax(logits: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
    return (torch.exp(_f32(logits) - lse[:, None]) * scale[:, None]).to(dtype)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    return entropy_from_logprobs(torch.log_softmax(_f32(logits), -1))


# The passes over [rows, vocabulary] logits, fused by torch.compile into one read each (on CPU ~10x
# faster than eager for the log-prob passes, ~2x for the sampling CDF); `use_compiled_kernels(False)`
# keeps them eager.
_EAGER = {"lse": _lse_and_target, "grad": _grad_logits, "cdf": _sampling_cdf, "slice_mass": _slice_mass,
          "slice_cdf": _slice_cdf, "logsumexp": _logsumexp, "softmax": _scaled_softmax, "entropy": _entropy}
_KERNELS = dict(_EAGER)


def use_compiled_kernels(enabled: bool) -> None:
    for name, fn in _EAGER.items():
        _KERNELS[name] = torch.compile(fn, dynamic=True) if enabled else fn


def _matmul_dtype(kind: str, dtype: torch.dtype) -> torch.dtype:
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else dtype


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


def _target_logit(hb: torch.Tensor, wb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (_f32(hb) * _f32(wb[targets])).sum(-1)


class _SampledLogprob(torch.autograd.Function):
    """log softmax(h W^T)[y] = h.W[y] - lse, with lse and softmax(h W^T) read from the sampling pass's logits.

    Valid only for the weights that sampled (one update per batch): h W^T is then the sampling logits up to
    float rounding. The forward skips the [N, V] projection; the backward reads the kept logits one vocabulary
    slice at a time for its two projections (grad_h and grad_W).
    """

    @staticmethod
    def forward(ctx, h, weight, targets, logits, index, lse, dtype):
        hb, wb = h.to(dtype), weight.to(dtype)
        ctx.save_for_backward(hb, wb, targets, lse)
        ctx.logits, ctx.index, ctx.in_dtypes = logits, index, (h.dtype, weight.dtype)
        return _target_logit(hb, wb, targets) - lse

    @staticmethod
    def backward(ctx, grad_out):
        hb, wb, targets, lse = ctx.saved_tensors
        g = _f32(grad_out)
        need_h, need_w = ctx.needs_input_grad[:2]
        # d logp / d logits = onehot(y) - softmax: the softmax slice by slice, then the onehot part
        grad_h = _f32(wb[targets]) * g[:, None] if need_h else None
        grad_w = torch.empty(wb.shape, dtype=hb.dtype, device=wb.device) if need_w else None
        columns = max(1, SLICE_BYTES // (4 * max(1, len(targets))))
        for start in range(0, wb.shape[0], columns):
            stop = min(start + columns, wb.shape[0])
            rows = ctx.logits[:, start:stop] if ctx.index is None else ctx.logits[ctx.index, start:stop]
            p = _KERNELS["softmax"](rows, lse, -g, hb.dtype)  # -g * softmax
            if need_h and p.dtype == grad_h.dtype:
                grad_h.addmm_(p, wb[start:stop])
            elif need_h:
                grad_h += p @ wb[start:stop]
            if need_w:
                torch.mm(p.T, hb, out=grad_w[start:stop])
        if need_w:
            grad_w = _f32(grad_w).index_add_(0, targets, _f32(hb) * g[:, None])
        return (grad_h.to(ctx.in_dtypes[0]) if need_h else None, grad_w.to(ctx.in_dtypes[1]) if need_w else None,
                None, None, None, None, None)


@torch.no_grad()
def _chunked_logprob(hb: torch.Tensor, wb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(h W^T)[y] without a graph, the log-sum-exp taken one [rows, HEAD_CHUNK] slice at a time."""
    rows = max(1, SLICE_BYTES // (4 * HEAD_CHUNK))
    lse = torch.cat([
        torch.logsumexp(torch.stack([_KERNELS["logsumexp"](block @ wb[start : start + HEAD_CHUNK].T)
                                     for start in range(0, wb.shape[0], HEAD_CHUNK)], -1), -1)
        for block in hb.split(rows)
    ])
    return _target_logit(hb, wb, targets) - lse


def linear_logprob(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(h @ weight.T)[targets] in float32, matmuls in the autocast dtype when autocast is on."""
    dtype = _matmul_dtype(h.device.type, h.dtype)
    with torch.autocast(h.device.type, enabled=False):
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            return _LinearLogprob.apply(h, weight, targets, dtype)
        return _chunked_logprob(h.to(dtype), weight.to(dtype), targets)


def _completion_hidden(model, rollout: Rollout) -> torch.Tensor:
    """[B, Lc, d]: the final hidden state that predicts each completion token (columns Lp - 1 .. L - 2).

    The prompt runs once per distinct prompt (see `_prompt_forward`), then the completions attend to its
    cache; the last completion token predicts nothing and is not fed.
    """
    ids, mask, lp = rollout.input_ids, rollout.attention_mask, rollout.prompt_len
    positions = position_ids_from_mask(mask)
    cache = DynamicCache()
    prompt = _prompt_forward(model, ids[:, :lp], mask[:, :lp], positions[:, :lp], cache)[:, -1:]
    if ids.shape[1] - lp < 2:
        return prompt
    completion = model.base_model(input_ids=ids[:, lp:-1], attention_mask=mask[:, :-1],
                                  position_ids=positions[:, lp:-1], past_key_values=cache,
                                  use_cache=True).last_hidden_state
    return torch.cat([prompt, completion], 1)


def _logprobs_from_kept(weight, rollout: Rollout, hidden: torch.Tensor, keep: torch.Tensor, entropy_stride: int):
    """`completion_logprobs` from the sampler's kept logits (see `_SampledLogprob`), rows token-major like them."""
    keep_t = keep.T
    h, targets = hidden.transpose(0, 1)[keep_t], rollout.completion_ids.T[keep_t]
    index = None if keep.all() else keep_t.flatten().nonzero().squeeze(-1)
    dtype = _matmul_dtype(h.device.type, h.dtype)
    with torch.autocast(h.device.type, enabled=False):
        values = _SampledLogprob.apply(h, weight, targets, rollout.logits.flatten(0, 1), index,
                                       rollout.logsumexp.T[keep_t], dtype)
    token_lp = values.new_zeros(keep.shape)  # float32 (float64 for a float64 model)
    token_lp.T[keep_t] = values
    entropy = None
    if entropy_stride:
        with torch.no_grad():
            b, t = keep.nonzero()[::entropy_stride].T  # the tokens `completion_logprobs` takes without kept logits
            entropy = _KERNELS["entropy"](rollout.logits[t, b, : weight.shape[0]]).mean()
    return token_lp, entropy, None


@gathers_weights
def completion_logprobs(
    model, rollout: Rollout, entropy_stride: int = 0, full: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token log pi(y_t | x, y_<t) of the completion tokens, in float32.

    The LM head runs only at completion positions that count (mask = 1): at these sizes the
    vocabulary projection is most of the arithmetic. If `model` sampled `rollout` with
    `keep_logits=True` and its weights have not changed since, its sampling logits stand for the head
    (see `_SampledLogprob`). Returns (token_logprobs [B, Lc], the mean full-vocabulary entropy over
    every `entropy_stride`-th counted token (None if 0; a subsample, since it is for logging), and
    with `full=True` the log-probs [N_valid, V] over the vocabulary).
    """
    keep = rollout.completion_mask.bool()
    hidden = _completion_hidden(model, rollout)
    head = model.get_output_embeddings()
    if not full and getattr(head, "bias", None) is None and rollout.logits is not None and rollout.sampled_by(model):
        return _logprobs_from_kept(head.weight, rollout, hidden, keep, entropy_stride)
    logprobs = entropy = None
    h, targets = hidden[keep], rollout.completion_ids[keep]
    if full or getattr(head, "bias", None) is not None:
        logprobs = torch.log_softmax(head(h).float(), dim=-1)
        values = logprobs.gather(-1, targets[:, None]).squeeze(-1)
    else:
        values = linear_logprob(h, head.weight, targets)
    token_lp = values.new_zeros(keep.shape)  # float32 (float64 for a float64 model)
    token_lp[keep] = values
    if entropy_stride:
        with torch.no_grad():
            if logprobs is not None:
                entropy = entropy_from_logprobs(logprobs[::entropy_stride]).mean()
            else:
                entropy = _KERNELS["entropy"](head(h[::entropy_stride].detach())).mean()
    return token_lp, entropy, logprobs
