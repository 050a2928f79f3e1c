"""Sampling and completion log-probs of the policy against hand computations and properties."""

import dataclasses
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning.algo import rl
from warp_lightning.data.prompts import left_pad
from warp_lightning.policy import vocab_ops
from warp_lightning.policy.logprobs import completion_logprobs
from warp_lightning.policy.sampling import sample
from warp_lightning.policy.vocab_ops import draw_tokens, linear_logprob, use_compiled_kernels


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sliced_sampling_matches_the_distribution(monkeypatch, temperature):
    """The sampler picks a vocabulary slice by its mass, then a token by the slice's own CDF."""
    monkeypatch.setattr(vocab_ops, "HEAD_CHUNK", 4)
    probs = torch.tensor([0.05, 0.1, 0.0, 0.15, 0.2, 0.02, 0.08, 0.1, 0.25, 0.05])  # 3 slices, the last padded
    logits = torch.full((40000, 12), float("-inf"))
    logits[:, :10] = probs.log() + 3.0
    uniform = torch.rand(len(logits), 1, generator=torch.Generator().manual_seed(0))
    draws, lse = draw_tokens(logits / temperature, 10, uniform)  # logits at the temperature
    expected = torch.softmax(probs.log() / temperature, -1)
    freq = torch.bincount(draws, minlength=10).float() / len(draws)
    assert torch.allclose(freq, expected, atol=0.01) and freq[2] == 0
    normaliser = torch.logsumexp((probs.log()[probs > 0] + 3.0) / temperature, -1)  # of the scaled logits
    assert torch.allclose(lse, normaliser.expand_as(lse), atol=1e-5)


def test_scoring_logprobs_equal_sampling_logprobs_with_left_padding():
    """WARP.md pitfall: position ids from the mask in every forward, so padded rows score as sampled."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=64)).eval()
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15]], pad_id=0)
    rollout = sample(model, ids, mask, 10, eos_token_id=3, pad_token_id=0,
                     generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scored, _, _ = completion_logprobs(model, rollout)
    # reference: each row alone, unpadded, one token at a time with no cache
    for row in range(3):
        prompt = ids[row][mask[row].bool()].tolist()
        completion = rollout.completion_ids[row][rollout.completion_mask[row].bool()].tolist()
        seq = prompt + completion
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0]
        ref = torch.log_softmax(logits[len(prompt) - 1 : -1], -1).gather(-1, torch.tensor(completion)[:, None])
        assert torch.allclose(scored[row, : len(completion)], ref[:, 0], atol=1e-5)
        assert math.isclose(scored[row, len(completion) :].abs().sum().item(), 0.0)


def test_sampling_stops_at_eos_and_masks_after():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=4, n_positions=64)).eval()
    ids, mask = left_pad([[1, 2]] * 8, pad_id=0)
    rollout = sample(model, ids, mask, 30, eos_token_id=3, pad_token_id=0,
                     generator=torch.Generator().manual_seed(0))
    for row in range(8):
        c, m = rollout.completion_ids[row], rollout.completion_mask[row]
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()  # mask is a prefix
        eos = (c[:n] == 3).nonzero()
        if n < c.shape[0]:
            assert eos.numel() == 1 and eos.item() == n - 1  # the EOS is the last counted token
        assert (c[n:] == 0).all()


def test_fused_linear_logprob_matches_log_softmax_and_its_gradients():
    torch.manual_seed(0)
    h = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    w = (0.3 * torch.randn(97, 16, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 97, (40,))
    g = torch.randn(40, dtype=torch.float64)
    (linear_logprob(h, w, y) * g).sum().backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = torch.log_softmax(h2 @ w2.T, -1).gather(-1, y[:, None]).squeeze(-1)
    (ref * g).sum().backward()
    assert torch.allclose(linear_logprob(h, w, y), ref, atol=1e-10)
    assert torch.allclose(h.grad, h2.grad, atol=1e-10) and torch.allclose(w.grad, w2.grad, atol=1e-10)


@pytest.mark.slow
def test_compiled_kernels_match_eager_in_bf16(monkeypatch):
    torch.manual_seed(0)
    h, w, y = torch.randn(33, 16), 0.3 * torch.randn(101, 16), torch.randint(0, 101, (33,))
    grads = []
    for compiled in (False, True):
        use_compiled_kernels(compiled)
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear_logprob(hh, ww, y)
        out.sum().backward()
        grads.append((out.detach(), hh.grad, ww.grad))
    monkeypatch.setattr(vocab_ops, "HEAD_CHUNK", 32)  # the sampler's two levels: 4 slices of 101 columns
    logits = torch.full((8, vocab_ops.padded_vocab(101)), float("-inf"), dtype=torch.bfloat16)
    logits[:, :101] = torch.randn(8, 101).bfloat16() / 0.9
    uniform = torch.rand(8, 1, generator=torch.Generator().manual_seed(3))
    draws_compiled, lse_compiled = draw_tokens(logits, 101, uniform)
    use_compiled_kernels(False)
    for eager, compiled in zip(grads[0], grads[1], strict=True):
        assert torch.allclose(eager, compiled, atol=2e-2, rtol=2e-2)
    draws, lse = draw_tokens(logits, 101, uniform)
    assert torch.equal(draws, draws_compiled) and torch.allclose(lse, lse_compiled)


def test_sampling_without_eos_stop_gives_exactly_max_new_tokens():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=4, n_positions=64)).eval()
    ids, mask = left_pad([[1, 2]] * 8, pad_id=0)
    rollout = sample(model, ids, mask, 30, eos_token_id=3, pad_token_id=0, stop_at_eos=False,
                     generator=torch.Generator().manual_seed(0))
    assert rollout.completion_ids.shape == (8, 30) and rollout.completion_mask.all()
    assert (rollout.completion_ids == 3).any()  # EOS was drawn and kept as an ordinary token
    assert rollout.attention_mask[:, 2:].all()


def _float64_policy(vocab: int = 6) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=vocab, n_positions=64, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).double().eval()


def _logprobs_and_grads(model, rollout, weights):
    model.zero_grad()
    token_lp, entropy, _ = completion_logprobs(model, rollout, entropy_stride=3)
    (token_lp * weights).sum().backward()
    return token_lp.detach(), entropy, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(("temperature", "min_new"), [(1.0, 0), (0.7, 0), (0.7, 4)])
def test_kept_sampling_logits_give_the_same_logprobs_and_gradients(monkeypatch, temperature, min_new):
    """One update per batch: the sampling pass's logits stand for the head's projection (float64), also when
    sampling at another temperature and with EOS banned for the first tokens (the log-probs are those of the
    distribution sampled, at that temperature and under that ban)."""
    monkeypatch.setattr(vocab_ops, "HEAD_CHUNK", 4)  # two vocabulary slices (vocabulary 6, padded to 8)
    monkeypatch.setattr(vocab_ops, "SLICE_BYTES", 4 * 4 * 20)  # and slices of a few columns or rows elsewhere
    model = _float64_policy()
    # the k = 3 samples of each prompt share one prompt forward; EOS (3) stops some rows early
    ids, mask = left_pad([[1, 2, 4], [5], [4, 4, 1, 2]], pad_id=0)
    ids, mask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)
    rollout = sample(model, ids, mask, 12, temperature, eos_token_id=3, pad_token_id=0, keep_logits=True,
                     min_new_tokens=min_new, generator=torch.Generator().manual_seed(2))
    assert not rollout.completion_mask.all() and rollout.sampled_by(model)
    assert (rollout.eos_banned() is None) == (min_new == 0)
    plain = dataclasses.replace(rollout, logits=None, logsumexp=None, sampler=None)
    weights = torch.randn(rollout.completion_mask.shape, generator=torch.Generator().manual_seed(0))
    kept_lp, kept_entropy, kept_grads = _logprobs_and_grads(model, rollout, weights)
    lp, entropy, grads = _logprobs_and_grads(model, plain, weights)
    assert torch.allclose(kept_lp, lp, atol=1e-10)
    assert torch.allclose(kept_entropy, entropy, atol=1e-6)  # entropy is logged in float32
    for a, b in zip(kept_grads, grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    with torch.no_grad():  # the graph-free path (the anchor's): the log-sum-exp slice by slice
        assert torch.allclose(completion_logprobs(model, plain)[0], lp, atol=1e-10)


def test_shared_prompt_forward_matches_each_row_alone():
    """k samples per prompt run the prompt once; values and gradients are those of separate full forwards."""
    model = _float64_policy()
    ids, mask = left_pad([[1, 2, 4], [5], [4, 4, 1, 2]], pad_id=0)
    ids, mask = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
    rollout = sample(model, ids, mask, 5, eos_token_id=3, pad_token_id=0, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(rollout.completion_mask.shape, generator=torch.Generator().manual_seed(0))
    lp, _, grads = _logprobs_and_grads(model, rollout, weights)
    model.zero_grad()
    total = 0.0
    for row in range(ids.shape[0]):
        prompt = ids[row][mask[row].bool()].tolist()
        completion = rollout.completion_ids[row][rollout.completion_mask[row].bool()].tolist()
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
        assert torch.allclose(lp[row, : len(completion)], ref.detach(), atol=1e-10)
        total = total + (ref * weights[row, : len(completion)]).sum()
    total.backward()
    for a, p in zip(grads, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-10)


def test_kept_logits_are_used_only_by_the_sampler_with_unchanged_weights(monkeypatch):
    monkeypatch.setattr(vocab_ops, "HEAD_CHUNK", 4)
    model = _float64_policy()
    other = _float64_policy()
    ids, mask = left_pad([[1, 2]] * 2, pad_id=0)
    rollout = sample(model, ids, mask, 4, keep_logits=True, generator=torch.Generator().manual_seed(0))
    assert rollout.sampled_by(model) and not rollout.sampled_by(other)
    assert rollout.logits.shape == (4, 2, 8) and rollout.logsumexp.shape == (2, 4)  # token-major, padded
    assert torch.isinf(rollout.logits[..., 6:]).all()
    with torch.no_grad():
        next(model.parameters()).add_(0.0)  # any in-place update (optimizer, EMA, load_state_dict)
    assert not rollout.sampled_by(model)
    assert sample(model, ids, mask, 4).logits is None


def test_kept_logits_buffer_is_reused_only_when_nothing_views_it():
    model = _float64_policy()
    ids, mask = left_pad([[1, 2]] * 3, pad_id=0)
    first = sample(model, ids, mask, 5, keep_logits=True, generator=torch.Generator().manual_seed(0))
    saved = first.logits.clone()
    second = sample(model, ids, mask, 5, keep_logits=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first.logits, saved)  # the first rollout still holds its own buffer
    address = second.logits.data_ptr()
    del second
    third = sample(model, ids, mask, 5, keep_logits=True, generator=torch.Generator().manual_seed(2))
    assert third.logits.data_ptr() == address and torch.equal(first.logits, saved)


def test_kl_penalized_reward_and_zero_kl_for_equal_models():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)).eval()
    anchor = GPT2LMHeadModel(model.config).eval()
    anchor.load_state_dict(model.state_dict())
    ids, mask = left_pad([[1, 2, 3], [4, 5]], pad_id=0)
    rollout = sample(model, ids, mask, 6, eos_token_id=None, generator=torch.Generator().manual_seed(0))
    m = rollout.completion_mask.float()
    lp = rl.sequence_logprob(completion_logprobs(model, rollout)[0], m)
    la = rl.sequence_logprob(completion_logprobs(anchor, rollout)[0], m)
    kl = rl.sampled_kl(lp, la)
    assert torch.equal(kl, torch.zeros_like(kl))
    reward = torch.tensor([0.3, 0.7])
    assert torch.equal(rl.kl_penalized_reward(reward, kl, 0.1), reward)
    shaped = rl.kl_penalized_reward(reward, torch.tensor([2.0, -1.0]), 0.1)
    assert shaped.tolist() == pytest.approx([0.1, 0.8])
    assert not shaped.requires_grad


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_prompt_is_computed_once_for_its_k_samples_with_the_same_samples(monkeypatch, family):
    """The chat shape (long templated prompts, k samples each): the prompt's forward runs on the distinct prompts
    only (its KV cache then shared by the k rows), in sampling and in scoring, for GPT-2 and Llama (SmolLM2) alike;
    the samples are exactly those of k separate prompt forwards with the same random numbers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from warp_lightning.policy import sampling

    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=1)).eval()
    else:
        model = _float64_policy(vocab=32).float()
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15], [16, 17, 18, 19, 20]]
    k = 4
    ids, mask = left_pad(prompts, pad_id=0)
    ids, mask = ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
    rows_seen = []
    forward = model.base_model.forward

    def counting(*args, **kwargs):
        rows_seen.append(kwargs["input_ids"].shape)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.base_model, "forward", counting)
    shared = sample(model, ids, mask, 6, eos_token_id=3, pad_token_id=0, generator=torch.Generator().manual_seed(1))
    assert rows_seen[0] == (len(prompts), ids.shape[1])  # the prompts' forward: 3 rows, not 12
    rows_seen.clear()
    with torch.no_grad():
        shared_lp = completion_logprobs(model, shared)[0]
    assert rows_seen[0] == (len(prompts), ids.shape[1])
    monkeypatch.setattr(sampling, "_repeated_rows", lambda ids, mask: None)  # every row's prompt on its own
    alone = sample(model, ids, mask, 6, eos_token_id=3, pad_token_id=0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(shared.input_ids, alone.input_ids) and torch.equal(shared.completion_mask, alone.completion_mask)
    with torch.no_grad():
        torch.testing.assert_close(completion_logprobs(model, alone)[0], shared_lp, atol=1e-5, rtol=1e-5)
