"""Sampling and scoring share one distribution: softmax(logits / T) with EOS banned before min_new_tokens, for
every model that scores a rollout; the static-shape decode loop against a plain one (CPU, float64)."""

import dataclasses

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning import UserError
from warp_lightning.algo.rl import exact_kl_from_logprobs
from warp_lightning.cli import CONF_DIR
from warp_lightning.data.prompts import left_pad
from warp_lightning.policy import vocab_ops
from warp_lightning.policy.logprobs import completion_logprobs
from warp_lightning.policy.sampling import sample
from warp_lightning.train.checks import check_train_config

EOS = 3


def peaked_policy(seed: int = 3, vocab: int = 6, spread: float = 0.4, **config) -> GPT2LMHeadModel:
    """A float64 GPT-2 whose next-token distributions are far from uniform (so that T and the EOS ban matter)."""
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=vocab, n_positions=64, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=spread, bos_token_id=0, eos_token_id=EOS,
                     **config)
    return GPT2LMHeadModel(cfg).double().eval()


def prompts(k: int = 3):
    ids, mask = left_pad([[1, 2, 4], [5], [4, 4, 1, 2]], pad_id=0)
    return ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)


def reference(model, ids, mask, n: int, temperature: float, min_new: int, seed: int):
    """Row by row, no cache, full forwards: the tokens and log-probs the sampler must give for these uniforms."""
    uniforms = torch.rand(n, ids.shape[0], 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rows = []
    for b in range(ids.shape[0]):
        seq, tokens, logprobs = ids[b][mask[b].bool()].tolist(), [], []
        for t in range(n):
            with torch.no_grad():
                logits = model(torch.tensor([seq])).logits[0, -1] / temperature
            if t < min_new:
                logits[EOS] = float("-inf")
            cdf = torch.softmax(logits, -1).cumsum(0)
            y = int(torch.searchsorted(cdf, (1 - uniforms[t, b]) * cdf[-1:]).clamp(max=len(cdf) - 1))
            tokens.append(y)
            logprobs.append(torch.log_softmax(logits, -1)[y])
            seq.append(y)
            if y == EOS:
                break
        rows.append((tokens, torch.stack(logprobs)))
    return rows


@pytest.mark.parametrize(("temperature", "min_new", "pad_to"), [(1.0, 0, None), (0.7, 4, None), (0.7, 10, None),
                                                                (0.5, 3, 8)])
def test_static_decode_equals_a_plain_decode_and_scoring_equals_sampling(monkeypatch, temperature, min_new, pad_to):
    """Tokens of the static loop = those of full forwards with the same uniforms; sampling, scoring and the plain
    forwards give the same log-probs under the temperature and the EOS mask (prompts padded to 8 columns too)."""
    monkeypatch.setattr(vocab_ops, "HEAD_CHUNK", 4)  # two vocabulary slices
    model = peaked_policy()
    ids, mask = prompts()
    rollout = sample(model, ids, mask, 10, temperature, eos_token_id=EOS, pad_token_id=0, min_new_tokens=min_new,
                     keep_logits=True, pad_prompts_to=pad_to, generator=torch.Generator().manual_seed(5))
    assert (rollout.temperature, rollout.min_new_tokens, rollout.eos_token_id) == (temperature, min_new, EOS)
    assert pad_to is None or rollout.prompt_len == 8
    lengths = rollout.completion_mask.sum(-1)
    assert (lengths >= min_new).all() and (lengths < 10).any() == (min_new < 10)  # EOS ends some rows
    keep = rollout.completion_mask.bool()
    c = rollout.completion_ids
    sampled = (rollout.logits.gather(-1, c.T[..., None])[..., 0] - rollout.logsumexp.T).T  # the sampler's own
    with torch.no_grad():
        scored = completion_logprobs(model, dataclasses.replace(rollout, logits=None, sampler=None))[0]
        kept = completion_logprobs(model, rollout)[0]
    for b, (tokens, logprobs) in enumerate(reference(model, ids, mask, 10, temperature, min_new, seed=5)):
        assert c[b, : len(tokens)].tolist() == tokens and int(lengths[b]) == len(tokens)
        assert (c[b, len(tokens) :] == 0).all()
        for values in (sampled, scored, kept):
            assert torch.allclose(values[b, : len(tokens)], logprobs, atol=1e-10)
    assert (scored[~keep] == 0).all()


def test_static_decode_of_a_grouped_query_llama_equals_a_plain_decode():
    """Llama (rotary positions, 2 key/value heads for 4 query heads) through the same static loop."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.4, bos_token_id=0,
                      eos_token_id=EOS, pad_token_id=0)
    model = LlamaForCausalLM(cfg).double().eval()
    ids, mask = prompts()
    rollout = sample(model, ids, mask, 8, 0.8, eos_token_id=EOS, pad_token_id=0, min_new_tokens=2,
                     generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        scored = completion_logprobs(model, rollout)[0]
    for b, (tokens, logprobs) in enumerate(reference(model, ids, mask, 8, 0.8, 2, seed=5)):
        assert rollout.completion_ids[b, : len(tokens)].tolist() == tokens
        assert int(rollout.completion_mask[b].sum()) == len(tokens)
        assert torch.allclose(scored[b, : len(tokens)], logprobs, atol=1e-10)


def test_eos_is_never_sampled_before_min_new_tokens():
    model = peaked_policy()
    ids, mask = left_pad([[1, 2]] * 64, pad_id=0)

    def rollout(min_new):
        return sample(model, ids, mask, 12, eos_token_id=EOS, pad_token_id=0, min_new_tokens=min_new,
                      generator=torch.Generator().manual_seed(0))

    assert (rollout(0).completion_ids[:, :5] == EOS).any()  # EOS is likely early here: without the ban
    banned = rollout(5)
    c, lengths = banned.completion_ids, banned.completion_mask.sum(-1)
    assert not (c[:, :5] == EOS).any() and (lengths >= 5).all() and (c[:, 5:] == EOS).any()
    fixed = rollout(12)
    assert fixed.completion_mask.all() and not (fixed.completion_ids == EOS).any()  # fixed-length continuations


def test_every_model_scores_under_the_mask_and_the_exact_kl_stays_finite():
    """The anchor (another model) is scored under the same temperature and EOS ban; the full-vocabulary
    log-probs give the exact KL between the masked, tempered distributions."""
    policy, anchor = peaked_policy(3), peaked_policy(1)
    ids, mask = prompts(2)
    rollout = sample(policy, ids, mask, 6, 0.8, eos_token_id=EOS, pad_token_id=0, min_new_tokens=3,
                     generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lp, _, full_p = completion_logprobs(policy, rollout, full=True)
        la, _, full_a = completion_logprobs(anchor, rollout, full=True)
        la_fast = completion_logprobs(anchor, rollout)[0]
    keep = rollout.completion_mask.bool()
    assert torch.allclose(la, la_fast, atol=1e-10)
    position = torch.arange(keep.shape[1]).expand_as(keep)[keep]
    banned = position < 3
    assert (full_p[banned, EOS].exp() == 0).all() and (full_p[~banned, EOS].exp() > 0).all()
    assert torch.allclose(full_p.exp().sum(-1), torch.ones(len(full_p), dtype=full_p.dtype))
    kl = exact_kl_from_logprobs(full_p, full_a)
    brute = []
    for b, t in keep.nonzero().tolist():  # KL of the two masked, tempered distributions by hand
        seq = rollout.input_ids[b][rollout.attention_mask[b].bool()]
        n_prompt = int(rollout.attention_mask[b, : rollout.prompt_len].sum())
        dists = []
        for model in (policy, anchor):
            with torch.no_grad():
                logits = model(seq[None]).logits[0, n_prompt - 1 + t] / 0.8
            if t < 3:
                logits[EOS] = float("-inf")
            dists.append(torch.softmax(logits, -1))
        p, q = dists
        brute.append((p[p > 0] * (p[p > 0] / q[p > 0]).log()).sum())
    assert torch.isfinite(kl).all() and torch.allclose(kl, torch.stack(brute), atol=1e-10)
    assert torch.allclose(full_a.gather(-1, rollout.completion_ids[keep][:, None])[:, 0], la[keep], atol=1e-10)


def _score_function_z(model, rollout, rows: int) -> torch.Tensor:
    """Per coordinate of a shift of the final hidden state (what ln_f.bias moves): the Monte-Carlo mean of
    grad log pi(y|x) over the rollout's samples, in standard errors."""
    norm = model.transformer.ln_f
    shift = torch.zeros(rows, 1, norm.normalized_shape[0], dtype=torch.float64, requires_grad=True)
    model.transformer.ln_f = _Shifted(norm, shift)
    try:
        logprob = completion_logprobs(model, rollout)[0].sum(-1)
        grads = torch.autograd.grad(logprob.sum(), shift)[0][:, 0]  # row i: grad log pi(y_i | x_i)
    finally:
        model.transformer.ln_f = norm
    return grads.mean(0) / (grads.std(0) / rows**0.5)


class _Shifted(torch.nn.Module):
    def __init__(self, norm, shift):
        super().__init__()
        self.norm, self.shift = norm, shift

    def forward(self, x):
        return self.norm(x) + self.shift


@pytest.mark.parametrize("mismatch", ["temperature", "eos mask"])
def test_score_function_gradient_has_mean_zero_only_under_the_distribution_sampled(mismatch):
    """E_{y ~ pi_T}[grad log pi_T(y|x)] = 0: within 4 standard errors per coordinate when scored at T = 0.5 with
    the EOS ban, clearly not when the T = 0.5 samples are scored at T = 1 (or without the ban)."""
    model = peaked_policy(vocab=6, spread=0.5).requires_grad_(False)
    rows = 4000
    # distinct prompts, so that each row runs its own prompt forward (one shift per row)
    ids = torch.stack([torch.arange(rows) % 6, torch.arange(rows) // 6 % 6, torch.arange(rows) // 36 % 6], -1)
    rollout = sample(model, ids, torch.ones_like(ids), 3, 0.5, eos_token_id=EOS, pad_token_id=0, min_new_tokens=2,
                     generator=torch.Generator().manual_seed(0))
    right = _score_function_z(model, rollout, rows)
    assert right.abs().max() < 4, right
    wrong = dataclasses.replace(rollout, **({"temperature": 1.0} if mismatch == "temperature" else {"min_new_tokens": 0}))
    assert _score_function_z(model, wrong, rows).abs().max() > 8


def test_a_seed_gives_the_same_tokens_and_uniforms_are_drawn_once_per_rollout():
    model = peaked_policy()
    ids, mask = prompts()
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        runs.append((sample(model, ids, mask, 8, 0.9, eos_token_id=EOS, min_new_tokens=8, generator=g).input_ids,
                     torch.rand(1, generator=g)))
    assert torch.equal(runs[0][0], runs[1][0])
    g = torch.Generator().manual_seed(7)
    torch.rand(8, ids.shape[0], generator=g, dtype=torch.float64)  # one [steps, rows] draw: the whole rollout's
    assert torch.equal(runs[0][1], torch.rand(1, generator=g))


def test_eager_attention_decodes_like_sdpa():
    ids, mask = prompts()
    out = []
    for attention in ("sdpa", "eager"):
        model = peaked_policy(attn_implementation=attention)
        assert model.config._attn_implementation == attention
        r = sample(model, ids, mask, 8, eos_token_id=EOS, min_new_tokens=2, generator=torch.Generator().manual_seed(3))
        out.append((r.input_ids, completion_logprobs(model, r)[0].detach()))
    assert torch.equal(out[0][0], out[1][0]) and torch.allclose(out[0][1], out[1][1], atol=1e-10)


def test_bad_min_new_tokens_is_refused():
    model = peaked_policy()
    ids, mask = prompts()
    with pytest.raises(ValueError, match="min_new_tokens=5"):
        sample(model, ids, mask, 4, min_new_tokens=5)


def _compose_train(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(("override", "key"), [("warp.min_new_tokens=25", "warp.min_new_tokens"),
                                               ("warp.min_new_tokens=-1", "warp.min_new_tokens"),
                                               ("eval.min_new_tokens=30", "eval.min_new_tokens")])
def test_min_new_tokens_config_is_checked(override, key, tmp_path):
    base = [f"paths.models_dir={tmp_path}", "policy.build=null", "reward_model.build=null"]
    cfg = _compose_train(*base)
    assert cfg.warp.min_new_tokens == cfg.warp.max_new_tokens == cfg.eval.min_new_tokens  # fixed length
    assert _compose_train(*base, "warp.max_new_tokens=8").eval.min_new_tokens == 8  # follows max_new_tokens
    with pytest.raises(UserError) as err:
        check_train_config(_compose_train(*base, override))
    assert str(err.value).startswith(key) and "\n" not in str(err.value)
