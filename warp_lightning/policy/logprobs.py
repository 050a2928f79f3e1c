"""Per-token log-probs of sampled completions: the LM head only at completion tokens, or the sampler's kept logits.

Every log-prob is that of the distribution the rollout was sampled from (`Rollout.temperature`,
`Rollout.min_new_tokens`): log softmax(z / T) with EOS at probability 0 before `min_new_tokens`, for whichever
model scores it (the policy, the anchor, theta_init, the SFT policy of the evaluation). The KL between two
models is then the KL between the distributions they would sample from.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from warp_lightning.algo.rl import entropy_from_logprobs
from warp_lightning.policy.models import position_ids_from_mask
from warp_lightning.policy.sampling import Rollout, prompt_forward
from warp_lightning.policy.sharding import gathers_weights
from warp_lightning.policy.vocab_ops import (
    KERNELS,
    SampledLogprob,
    ban_eos_,
    ban_eos_targets,
    linear_logprob,
    matmul_dtype,
    upcast,
)


def _completion_hidden(model, rollout: Rollout) -> torch.Tensor:
    """[B, Lc, d]: the final hidden state that predicts each completion token (columns Lp - 1 .. L - 2).

    The prompt runs once per distinct prompt (see `prompt_forward`), then the completions attend to its
    cache; the last completion token predicts nothing and is not fed.
    """
    ids, mask, lp = rollout.input_ids, rollout.attention_mask, rollout.prompt_len
    positions = position_ids_from_mask(mask)
    cache = DynamicCache()
    prompt = prompt_forward(model, ids[:, :lp], mask[:, :lp], positions[:, :lp], cache)[:, -1:]
    if ids.shape[1] - lp < 2:
        return prompt
    completion = model.base_model(input_ids=ids[:, lp:-1], attention_mask=mask[:, :-1],
                                  position_ids=positions[:, lp:-1], past_key_values=cache,
                                  use_cache=True).last_hidden_state
    return torch.cat([prompt, completion], 1)


def _logprobs_from_kept(weight, rollout: Rollout, hidden: torch.Tensor, keep: torch.Tensor, entropy_stride: int):
    """`completion_logprobs` from the sampler's kept logits (see `SampledLogprob`), rows token-major like them.
    `hidden` is already divided by the temperature, and the kept logits are at it and masked."""
    keep_t = keep.T
    h, targets = hidden.transpose(0, 1)[keep_t], rollout.completion_ids.T[keep_t]
    index = None if keep.all() else keep_t.flatten().nonzero().squeeze(-1)
    dtype = matmul_dtype(h.device.type, h.dtype)
    with torch.autocast(h.device.type, enabled=False):
        values = SampledLogprob.apply(h, weight, targets, rollout.logits.flatten(0, 1), index,
                                       rollout.logsumexp.T[keep_t], dtype)
    banned = rollout.eos_banned()
    if banned is not None:
        values = ban_eos_targets(values, targets, rollout.eos_token_id, banned.T[keep_t])
    token_lp = values.new_zeros(keep.shape)  # float32 (float64 for a float64 model)
    token_lp.T[keep_t] = values
    entropy = None
    if entropy_stride:
        with torch.no_grad():
            b, t = keep.nonzero()[::entropy_stride].T  # the tokens `completion_logprobs` takes without kept logits
            entropy = KERNELS["entropy"](rollout.logits[t, b, : weight.shape[0]]).mean()
    return token_lp, entropy, None


def _scaled_logits(head, h: torch.Tensor, temperature: float, eos: int | None, eos_rows: torch.Tensor | None,
                   banned_value: float = float("-inf")) -> torch.Tensor:
    """The head's logits of the temperature-scaled hidden states h / T, EOS set to `banned_value` in `eos_rows`."""
    bias = getattr(head, "bias", None)
    logits = torch.nn.functional.linear(h, head.weight, None if bias is None else bias / temperature)
    if eos_rows is not None:
        logits = ban_eos_(upcast(logits), eos, eos_rows, banned_value)
    return logits


@gathers_weights
def completion_logprobs(
    model, rollout: Rollout, entropy_stride: int = 0, full: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token log pi(y_t | x, y_<t) of the completion tokens, in float32, under the rollout's sampling
    distribution: softmax(logits / rollout.temperature), EOS at probability 0 before rollout.min_new_tokens.

    The LM head runs only at completion positions that count (mask = 1): at these sizes the
    vocabulary projection is most of the arithmetic. If `model` sampled `rollout` with
    `keep_logits=True` and its weights have not changed since, its sampling logits stand for the head
    (see `SampledLogprob`). Returns (token_logprobs [B, Lc], the mean full-vocabulary entropy over
    every `entropy_stride`-th counted token (None if 0; a subsample, since it is for logging), and
    with `full=True` the log-probs [N_valid, V] over the vocabulary, where a banned EOS holds the most negative
    float instead of -inf, so that p log p and p (log p - log q) are 0 there).
    """
    keep = rollout.completion_mask.bool()
    hidden = _completion_hidden(model, rollout)
    if rollout.temperature != 1:
        hidden = hidden / rollout.temperature  # (h / T) W^T = z / T, as the sampler computes it
    head = model.get_output_embeddings()
    if not full and getattr(head, "bias", None) is None and rollout.logits is not None and rollout.sampled_by(model):
        return _logprobs_from_kept(head.weight, rollout, hidden, keep, entropy_stride)
    banned = rollout.eos_banned()
    eos_rows = None if banned is None else banned[keep]
    eos = rollout.eos_token_id if banned is not None else None
    logprobs = entropy = None
    h, targets = hidden[keep], rollout.completion_ids[keep]
    if full or getattr(head, "bias", None) is not None:
        logits = _scaled_logits(head, h, rollout.temperature, eos, eos_rows, torch.finfo(torch.float32).min)
        logprobs = torch.log_softmax(upcast(logits), dim=-1)
        values = ban_eos_targets(logprobs.gather(-1, targets[:, None]).squeeze(-1), targets, eos, eos_rows)
    else:
        values = linear_logprob(h, head.weight, targets, eos, eos_rows)
    token_lp = values.new_zeros(keep.shape)  # float32 (float64 for a float64 model)
    token_lp[keep] = values
    if entropy_stride:
        with torch.no_grad():
            if logprobs is not None:
                entropy = entropy_from_logprobs(logprobs[::entropy_stride]).mean()
            else:
                rows = None if eos_rows is None else eos_rows[::entropy_stride]
                logits = _scaled_logits(head, h[::entropy_stride].detach(), rollout.temperature, eos, rows)
                entropy = KERNELS["entropy"](logits).mean()
    return token_lp, entropy, logprobs
