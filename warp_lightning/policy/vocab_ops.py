"""The vocabulary-sized operations of sampling and completion log-probs: the head's projection, inverse-CDF draws,
log-sum-exp and its gradient, in float32 whatever the matmul dtype. `sampling.py` and `logprobs.py` read top
to bottom; the [rows, vocabulary] arithmetic they share is here.

Every logit here is already that of the distribution sampled: the hidden state is divided by the temperature
before the projection ((h / T) W^T = z / T), and EOS is set to -inf at the completion positions before
`min_new_tokens` (`ban_eos_`). Sampling and scoring thus share one distribution by construction.
"""

from __future__ import annotations

import math

import torch

from warp_lightning.algo.rl import entropy_from_logprobs
from warp_lightning.runtime import internals

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


def project_head(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out[:, :V] = h @ weight.T + bias, one vocabulary slice at a time on CPU (one matmul on a GPU, whose
    caches gain nothing from slices); out's extra columns are left alone."""
    chunk = HEAD_CHUNK if out.device.type == "cpu" else weight.shape[0]
    for start in range(0, weight.shape[0], chunk):
        stop = min(start + chunk, weight.shape[0])
        torch.mm(h, weight[start:stop].T, out=out[:, start:stop])
    if bias is not None:
        out[:, : weight.shape[0]] += bias
    return out


def draw_tokens(logits: torch.Tensor, vocab: int, uniform: torch.Tensor, kernels: dict | None = None):
    """One token per row of softmax(logits) by inverse CDF in two levels, and the rows' log-sum-exp.

    `logits` is [B, padded_vocab(V)], already at the sampling temperature and masked; `uniform` [B, 1] holds one
    uniform in [0, 1) per row. It picks a slice of HEAD_CHUNK columns from the slices' masses, then a column from
    that slice's own CDF: the distribution of one cumsum + searchsorted over the row, without writing and
    scanning a [B, V] cumsum. No host synchronisation: a CUDA graph can capture it (with `kernels=EAGER_KERNELS`).
    """
    kernels = kernels or KERNELS
    rows = logits.shape[0]
    slices = logits.view(rows, -1, HEAD_CHUNK)
    mass, top, lse = kernels["slice_mass"](slices)
    cum = mass.cumsum(-1)
    # u in (0, total]: u = 0 would pick the first column whatever its probability
    u = (1 - uniform.to(cum.dtype)) * cum[:, -1:]
    j = torch.searchsorted(cum, u).clamp_(max=slices.shape[1] - 1)
    chosen = mass.gather(1, j).clamp_(min=torch.finfo(cum.dtype).tiny)
    cdf = kernels["slice_cdf"](slices[torch.arange(rows, device=j.device), j[:, 0]], top)
    # u's offset into the chosen slice, rescaled to that slice's own cumsum (equal up to rounding)
    target = (u - (cum.gather(1, j) - chosen)).clamp_(min=0) * (cdf[:, -1:] / chosen)
    column = torch.searchsorted(cdf, target).clamp_(max=HEAD_CHUNK - 1)
    return (j * HEAD_CHUNK + column).squeeze(-1).clamp_(max=vocab - 1), lse


def ban_eos_(logits: torch.Tensor, eos: int, rows: torch.Tensor | None = None, value: float = float("-inf")):
    """logits[rows, eos] = value in place (every row when `rows` is None): EOS gets probability 0 there."""
    column = logits[:, eos]
    if rows is None:
        column.fill_(value)
    else:
        column.masked_fill_(rows, value)
    return logits


_RESERVE: list[torch.Tensor] = []  # the kept-logits buffer of the last `sample(..., keep_logits=True)`


def reserved_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised buffer for kept logits, reusing the previous one once nothing views it any more.

    A fresh 400 MB buffer costs ~0.2 s of page faults per step on CPU (a tenth of a tiny model's step);
    the previous rollout and its graph are gone by the next step's sampling, so its memory is taken back.
    """
    numel = math.prod(shape)
    for buf in _RESERVE:
        # 2 users: `buf` and the temporary storage object; any rollout or graph still viewing it adds one
        if (buf.dtype == dtype and buf.device == device and buf.numel() >= numel
                and internals.storage_use_count(buf) == 2):
            return buf[:numel].view(shape)
    _RESERVE[:] = [torch.empty(numel, dtype=dtype, device=device)]
    return _RESERVE[0].view(shape)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float32, or float64 kept (the tests check the arithmetic in float64)."""
    return x if x.dtype == torch.float64 else x.float()


def _slice_mass(slices: torch.Tensor):
    """[B, S, C] logits -> (each slice's mass sum exp(l - top), top = the row max of l, the row's log-sum-exp)."""
    x = upcast(slices)
    top = x.amax((1, 2))
    mass = torch.exp(x - top[:, None, None]).sum(-1)
    return mass, top, top + mass.sum(-1).log()


def _slice_cdf(logits: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    return torch.exp(upcast(logits) - top[:, None]).cumsum(-1)


def _logsumexp(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(upcast(logits), -1)


def _lse_and_target(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lf = upcast(logits)
    return torch.logsumexp(lf, -1), lf.gather(-1, targets[:, None]).squeeze(-1)


def _grad_logits(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, grad_out: torch.Tensor):
    # d logp_i / d logits_i = onehot(y_i) - softmax(logits_i)
    lf = upcast(logits)
    grad = (torch.exp(lf - lse[:, None]) * (-grad_out)[:, None]).to(logits.dtype)
    grad[torch.arange(len(targets), device=grad.device), targets] += grad_out.to(logits.dtype)
    return grad


def _scaled_softmax(logits: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
    return (torch.exp(upcast(logits) - lse[:, None]) * scale[:, None]).to(dtype)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    # -inf logits (a banned EOS) have p log p = 0: log p held at the most negative float instead of -inf
    logprobs = torch.log_softmax(upcast(logits), -1)
    return entropy_from_logprobs(logprobs.clamp(min=torch.finfo(logprobs.dtype).min))


# The passes over [rows, vocabulary] logits, fused by torch.compile into one kernel each (on CPU ~10x
# faster than eager for the log-prob passes); `KERNELS` is the table in use, `use_compiled_kernels(False)`
# keeps it eager.
EAGER_KERNELS = {"lse": _lse_and_target, "grad": _grad_logits, "slice_mass": _slice_mass, "slice_cdf": _slice_cdf,
                 "logsumexp": _logsumexp, "softmax": _scaled_softmax, "entropy": _entropy}
KERNELS = dict(EAGER_KERNELS)


def use_compiled_kernels(enabled: bool) -> None:
    for name, fn in EAGER_KERNELS.items():
        KERNELS[name] = torch.compile(fn, dynamic=True) if enabled else fn


def matmul_dtype(kind: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype matmuls run in on device type `kind`: autocast's when it is on there, else `dtype`."""
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else dtype


class _LinearLogprob(torch.autograd.Function):
    """log softmax(h W^T)[y] without keeping the [N, V] log-softmax for backward.

    The vocabulary projection dominates a small LM's step; this runs its matmuls in `dtype` (bf16 under
    autocast) and the log-sum-exp in float32, and keeps only the (bf16) logits for backward.
    """
    @staticmethod
    def forward(ctx, h, weight, targets, dtype, eos, eos_rows):
        hb, wb = h.to(dtype), weight.to(dtype)
        logits = hb @ wb.T
        if eos is not None:
            ban_eos_(logits, eos, eos_rows)
        lse, target_logit = KERNELS["lse"](logits, targets)
        ctx.save_for_backward(hb, wb, targets, lse, logits)
        ctx.in_dtypes = (h.dtype, weight.dtype)
        return target_logit - lse

    @staticmethod
    def backward(ctx, grad_out):
        hb, wb, targets, lse, logits = ctx.saved_tensors
        grad_logits = KERNELS["grad"](logits, lse, targets, grad_out.to(lse.dtype))
        grad_h = (grad_logits @ wb).to(ctx.in_dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_w = (grad_logits.T @ hb).to(ctx.in_dtypes[1]) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None, None, None


def _target_logit(hb: torch.Tensor, wb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (upcast(hb) * upcast(wb[targets])).sum(-1)


class SampledLogprob(torch.autograd.Function):
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
        g = upcast(grad_out)
        need_h, need_w = ctx.needs_input_grad[:2]
        # d logp / d logits = onehot(y) - softmax: the softmax slice by slice, then the onehot part
        grad_h = upcast(wb[targets]) * g[:, None] if need_h else None
        grad_w = torch.empty(wb.shape, dtype=hb.dtype, device=wb.device) if need_w else None
        columns = max(1, SLICE_BYTES // (4 * max(1, len(targets))))
        for start in range(0, wb.shape[0], columns):
            stop = min(start + columns, wb.shape[0])
            rows = ctx.logits[:, start:stop] if ctx.index is None else ctx.logits[ctx.index, start:stop]
            p = KERNELS["softmax"](rows, lse, -g, hb.dtype)  # -g * softmax
            if need_h and p.dtype == grad_h.dtype:
                grad_h.addmm_(p, wb[start:stop])
            elif need_h:
                grad_h += p @ wb[start:stop]
            if need_w:
                torch.mm(p.T, hb, out=grad_w[start:stop])
        if need_w:
            grad_w = upcast(grad_w).index_add_(0, targets, upcast(hb) * g[:, None])
        return (grad_h.to(ctx.in_dtypes[0]) if need_h else None, grad_w.to(ctx.in_dtypes[1]) if need_w else None,
                None, None, None, None, None)


@torch.no_grad()
def _chunked_logprob(hb: torch.Tensor, wb: torch.Tensor, targets: torch.Tensor, eos: int | None = None,
                     eos_rows: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(h W^T)[y] without a graph, the log-sum-exp taken one [rows, HEAD_CHUNK] slice at a time."""
    rows = max(1, SLICE_BYTES // (4 * HEAD_CHUNK))
    lse = []
    for first in range(0, hb.shape[0], rows):
        block, parts = hb[first : first + rows], []
        for start in range(0, wb.shape[0], HEAD_CHUNK):
            logits = block @ wb[start : start + HEAD_CHUNK].T
            if eos is not None and start <= eos < start + logits.shape[1]:
                ban_eos_(logits, eos - start, None if eos_rows is None else eos_rows[first : first + rows])
            parts.append(KERNELS["logsumexp"](logits))
        lse.append(torch.logsumexp(torch.stack(parts, -1), -1))
    return ban_eos_targets(_target_logit(hb, wb, targets) - torch.cat(lse), targets, eos, eos_rows)


def ban_eos_targets(values: torch.Tensor, targets: torch.Tensor, eos: int | None, eos_rows: torch.Tensor | None):
    """-inf where the target is a banned EOS (probability 0), as a masked projection would give."""
    if eos is None:
        return values
    hit = targets == eos if eos_rows is None else (targets == eos) & eos_rows
    return values.masked_fill(hit, float("-inf"))


def linear_logprob(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, eos: int | None = None,
                   eos_rows: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(h @ weight.T)[targets] in float32, matmuls in the autocast dtype when autocast is on.

    With `eos`, that column is -inf in the rows where `eos_rows` is True (all rows if None): the distribution
    sampled before `min_new_tokens`. A temperature is the caller's, folded into `h` (h / T).
    """
    dtype = matmul_dtype(h.device.type, h.dtype)
    with torch.autocast(h.device.type, enabled=False):
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            return _LinearLogprob.apply(h, weight, targets, dtype, eos, eos_rows)
        return _chunked_logprob(h.to(dtype), weight.to(dtype), targets, eos, eos_rows)
