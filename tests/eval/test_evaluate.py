"""The evaluation protocol: intervals by hand, paired bootstrap intervals against exact enumeration, verdicts,
the held-out judge's accuracy, common random numbers, exact KL by brute force, KL(model || model) = 0."""

import itertools
import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning import UserError
from warp_lightning.algo.rl import exact_kl_from_logprobs
from warp_lightning.eval.protocol import subsample_indices
from warp_lightning.eval.stats import (
    CONTRADICTED,
    HOLDS,
    NOT_MEASURED,
    UNRESOLVED,
    Difference,
    combine_verdicts,
    compare_rows,
    distinct_n,
    hierarchical_bootstrap,
    mde_factor,
    mean_ci95,
    paired_difference,
    summarize,
    verdict,
)
from warp_lightning.policy.logprobs import completion_logprobs
from warp_lightning.policy.sampling import Rollout
from warp_lightning.reward.rewards import RewardScores


def test_ci95_matches_hand_computation():
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = sqrt(2.5), t_{0.975,4} = 2.7764 (scipy.stats.t)
    assert mean == 3.0 and half == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), rel=1e-4)


def test_paired_bootstrap_interval_equals_the_exact_percentiles():
    """d = a - b = (0, 0, 1, 3): the 4^4 = 256 equally likely resamples of 4 prompts give the exact bootstrap
    distribution of the mean. P(mean = 0) = (2/4)^4 = 6.25% > 2.5%, so the 2.5% point is 0; from the top,
    P(mean = 3) = 1/256 and P(mean = 2.5) = 4/256 (three 3s and the 1) sum to 1.95% < 2.5%, and with
    P(mean = 2.25) = 8/256 (three 3s and a 0) to 5.1% > 2.5%: the 97.5% point is 2.25."""
    a, b = np.array([1.0, 2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0, 3.0])
    d = a - b
    means = np.array([d[list(i)].mean() for i in itertools.product(range(4), repeat=4)])
    assert np.mean(means == 0) == 1 / 16 and np.mean(means > 2.25) == pytest.approx(5 / 256)
    for seed in (0, 1, 2):
        diff = paired_difference(a, b, seed=seed)
        assert (diff.mean, diff.low, diff.high, diff.n, diff.seeds) == (1.0, 0.0, 2.25, 4, (1, 1))
        assert diff.se == pytest.approx(means.std(), rel=0.05)  # the exact bootstrap standard error
        assert diff.mde == pytest.approx(2.8016 * diff.se, rel=1e-3)
    assert mde_factor() == pytest.approx(1.959964 + 0.841621, rel=1e-5)
    # one seed on each side: the two-level resampling reduces to the same interval
    assert np.quantile(hierarchical_bootstrap(a, b), [0.025, 0.975]).tolist() == [0.0, 2.25]


def test_two_level_bootstrap_matches_an_exhaustive_loop_over_prompts_and_seeds():
    """Arm A has two seeds, arm B one, on two prompts: 2^2 prompt draws x 2^2 seed draws = 16 equally likely
    resamples, enumerated by an independent loop; the sampled distribution matches it atom by atom."""
    a, b = np.array([[0.0, 1.0], [2.0, 4.0]]), np.array([[0.0, 0.0]])
    exact = {}
    for p1, p2, s1, s2 in itertools.product(range(2), repeat=4):
        value = np.mean([a[s, p] for s in (s1, s2) for p in (p1, p2)]) - b[0].mean()
        exact[value] = exact.get(value, 0) + 1 / 16
    dist = hierarchical_bootstrap(a, b, seed=0, n_resamples=20000)
    for value, prob in exact.items():
        assert np.mean(np.isclose(dist, value)) == pytest.approx(prob, abs=0.012), value
    assert np.isclose(dist[:, None], list(exact)).any(1).all()  # no other value
    diff = paired_difference(a, b)
    # P(0) = P(4) = 1/16 > 2.5%: the exact percentile interval is [0, 4]
    assert (diff.mean, diff.low, diff.high, diff.seeds) == (1.75, 0.0, 4.0, (2, 1))
    # paired seeds (the same runs seen two ways) resample one set of seeds for both arms
    same = paired_difference(a, a - 1.0, paired_seeds=True)
    assert (same.low, same.high, same.mean) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        paired_difference(a, np.zeros((1, 3)))


def test_verdicts_holds_contradicted_unresolved():
    def diff(low, high):
        return Difference((low + high) / 2, low, high, (high - low) / 3.92, 100)

    assert verdict(diff(0.01, 0.2)) == HOLDS
    assert verdict(diff(-0.2, -0.01)) == CONTRADICTED
    assert verdict(diff(-0.05, 0.1)) == UNRESOLVED == "unresolved at this sample size"
    assert verdict(diff(float("nan"), float("nan"))) == UNRESOLVED and verdict(None) == UNRESOLVED
    assert combine_verdicts([HOLDS, HOLDS]) == HOLDS and combine_verdicts([HOLDS, UNRESOLVED]) == UNRESOLVED
    assert combine_verdicts([HOLDS, CONTRADICTED, UNRESOLVED]) == CONTRADICTED
    assert combine_verdicts([]) == NOT_MEASURED


def test_summaries_and_paired_rows_line_up_by_prompt():
    rng = np.random.default_rng(0)
    rows_a = [{"subsample": s, "prompt_index": p, "sample": j, "reward": float(rng.random())}
              for s, ps in enumerate(([0, 3, 5], [1, 2, 4])) for p in ps for j in range(2)]
    rows_b = [{**r, "reward": r["reward"] - 0.1} for r in reversed(rows_a)]  # another order: matched by prompt
    m = summarize(rows_a, {"reward": "reward", "judge": "judge"})
    assert m["reward_mean"] == pytest.approx(np.mean([r["reward"] for r in rows_a]))
    assert m["reward_low"] < m["reward_mean"] < m["reward_high"] and "judge_mean" not in m
    assert len(m["reward_per_subsample"]) == 2
    d = compare_rows(rows_a, rows_b, "reward")
    assert d.mean == pytest.approx(0.1) and d.low == pytest.approx(0.1) and d.high == pytest.approx(0.1)
    with pytest.raises(ValueError, match="different prompts"):
        compare_rows(rows_a, rows_b[2:], "reward")


def test_subsamples_are_deterministic_disjoint_and_sized():
    a, b = subsample_indices(300, 5, 50, seed=0), subsample_indices(300, 5, 50, seed=0)
    assert a == b and all(len(s) == 50 for s in a)
    assert len({i for s in a for i in s}) == 250  # disjoint
    whole = subsample_indices(1002, 5, None, seed=0)  # the whole split
    assert [len(s) for s in whole] == [200, 200, 201, 200, 201] and len({i for s in whole for i in s}) == 1002
    with pytest.raises(UserError, match="disjoint"):
        subsample_indices(300, 5, 100, seed=0)


def test_judge_is_accurate_on_held_out_sentences_and_deterministic(asset_cache):
    from warp_lightning.eval.judge import load_judge

    judge = load_judge(None, asset_cache)
    assert judge.accuracy >= 0.70 and judge.n_test == 800 and judge.train_data == "sentences"
    again = load_judge({"name": "tfidf_lr", "train_data": "sentences", "ngram_max": 1, "C": 8.0}, asset_cache)
    texts = ["a moving , beautifully acted film", "a dull and tedious mess", ""]
    scores = judge(texts)
    assert np.array_equal(scores, again(texts)) and scores[0] > 0.5 > scores[1] and ((0 <= scores) & (scores <= 1)).all()


def test_every_model_draws_the_same_uniforms_per_batch(monkeypatch):
    """Common random numbers: each batch gets its own generator, seeded by (seed, batch start), whatever the
    model and however many steps the previous batch took (a model that stops at EOS at once, and one that
    never does, draw the same uniforms for the same rows)."""
    from types import SimpleNamespace

    from warp_lightning.eval import protocol

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=11, n_positions=32)
    chatty = GPT2LMHeadModel(cfg).eval()
    terse = GPT2LMHeadModel(cfg).eval()
    terse.load_state_dict(chatty.state_dict())
    with torch.no_grad():
        terse.lm_head.weight.zero_()  # tied to the embeddings: every logit 0 but EOS's
        terse.transformer.ln_f.bias.fill_(1.0)
        terse.transformer.ln_f.weight.zero_()
        terse.lm_head.weight[1] = 100.0
    seeds, real_sample = [], protocol.sample

    def recording_sample(*args, generator, **kwargs):
        seeds.append(generator.initial_seed())
        return real_sample(*args, generator=generator, **kwargs)

    monkeypatch.setattr(protocol, "sample", recording_sample)
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1,
                          decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids.tolist())))

    def reward(prompts, completions, columns):
        return RewardScores(torch.zeros(len(completions)))

    prompts = [[2, 3], [4, 5, 6], [7], [8, 9], [3, 3]]
    out = {}
    for name, model in (("chatty", chatty), ("terse", terse)):
        out[name] = protocol.score_completions(model, chatty, tok, reward, prompts, 1, 6, 1.0, seed=7, batch_size=2)
    assert seeds == [7 * 1_000_003 + start for start in (0, 2, 4)] * 2
    assert out["terse"]["length"] == [1.0] * 5 and max(out["chatty"]["length"]) > 1
    again = protocol.score_completions(chatty, chatty, tok, reward, prompts, 1, 6, 1.0, seed=7, batch_size=2)
    assert again["text"] == out["chatty"]["text"]


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)


def test_exact_kl_equals_brute_force_sum_and_is_zero_against_itself():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=11, n_positions=16)
    p, q = GPT2LMHeadModel(cfg).eval(), GPT2LMHeadModel(cfg).eval()
    ids = torch.tensor([[0, 3, 4, 5, 6], [2, 3, 1, 7, 8]])
    rollout = Rollout(ids, torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]), 2, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    with torch.no_grad():
        _, _, lp = completion_logprobs(p, rollout, full=True)
        _, _, lq = completion_logprobs(q, rollout, full=True)
        _, _, lp2 = completion_logprobs(p, rollout, full=True)
    kl = exact_kl_from_logprobs(lp, lq)
    brute = []
    for row, n in ((0, 3), (1, 2)):
        mask = rollout.attention_mask[row].bool()
        seq = ids[row][mask]
        pos = torch.arange(len(seq))[None]
        with torch.no_grad():
            a = torch.log_softmax(p(seq[None], position_ids=pos).logits[0].double(), -1)
            b = torch.log_softmax(q(seq[None], position_ids=pos).logits[0].double(), -1)
        start = 2 - int((~mask[:2]).sum())  # prompt tokens present in this row
        for t in range(n):
            pa, pb = a[start - 1 + t], b[start - 1 + t]
            brute.append(sum(pa[v].exp() * (pa[v] - pb[v]) for v in range(11)).item())
    assert torch.allclose(kl.double(), torch.tensor(brute, dtype=torch.float64), atol=1e-5)
    assert torch.equal(exact_kl_from_logprobs(lp, lp2), torch.zeros(5))


def test_models_are_named_by_key_or_by_their_last_two_path_parts():
    from omegaconf import OmegaConf

    from warp_lightning.eval.protocol import named_models

    assert named_models("outputs/train/x/final") == {"x/final": "outputs/train/x/final"}
    assert named_models(OmegaConf.create({"WARP": "/r/final"})) == {"WARP": "/r/final"}
    assert named_models(OmegaConf.create(["/a/final", "/b/final"])) == {"a/final": "/a/final", "b/final": "/b/final"}
    # two paths ending alike: each named by its whole path, neither left out
    assert named_models(["x/run/final", "y/run/final"]) == {"x/run/final": "x/run/final", "y/run/final": "y/run/final"}


def test_results_table_is_model_reward_judge_paired_differences_kl():
    from warp_lightning.eval.stats import results_table

    sft = {"reward_mean": 0.3, "reward_ci95": 0.02, "judge_mean": 0.41, "judge_ci95": 0.01, "kl_mean": 0.0,
           "kl_ci95": 0.0, "completion_length_mean": 23.0, "completion_length_ci95": 0.5, "distinct_1": 0.25,
           "distinct_2": 0.69}
    m = {"reward_mean": 0.8, "reward_ci95": 0.0371, "judge_mean": 0.52, "judge_ci95": 0.02, "kl_mean": 9.935,
         "kl_ci95": 0.331, "completion_length_mean": 23.0, "completion_length_ci95": 0.62, "distinct_1": 0.179,
         "distinct_2": 0.587, "reward_diff_mean": 0.5, "reward_diff_low": 0.46, "reward_diff_high": 0.54,
         "judge_diff_mean": 0.11, "judge_diff_low": 0.08, "judge_diff_high": 0.14}
    lines = results_table({"SFT": sft, "WARP": m}).splitlines()
    assert lines[0] == ("| model | mean reward (proxy) | mean judge | reward - SFT (paired) | judge - SFT (paired) | "
                        "mean KL(pi \\|\\| pi_sft) | completion length | distinct-1 / distinct-2 |")
    assert lines[2] == "| SFT | 0.300 ± 0.020 | 0.410 ± 0.010 | — | — | 0.00 ± 0.00 | 23.0 ± 0.5 | 0.250 / 0.690 |"
    assert lines[3] == ("| WARP | 0.800 ± 0.037 | 0.520 ± 0.020 | +0.500 [+0.460, +0.540] | +0.110 [+0.080, +0.140] "
                        "| 9.94 ± 0.33 | 23.0 ± 0.6 | 0.179 / 0.587 |")


def test_train_check_and_evaluate_share_one_schema():
    """`train`'s end-of-run check (quick_eval) and `evaluate` (evaluate_policy) name their figures alike; the
    paired gains are the same function's (paired_gains), so that a difference is reported once, one way."""
    from types import SimpleNamespace

    from datasets import Dataset
    from omegaconf import OmegaConf

    from warp_lightning.eval import protocol

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=11, n_positions=32)
    sft, other = GPT2LMHeadModel(cfg).eval(), GPT2LMHeadModel(cfg).eval()
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=1,
                          decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids.tolist())))

    def reward(prompts, completions, columns):
        return RewardScores(torch.tensor([(len(p) + len(c)) / 10 for p, c in zip(prompts, completions, strict=True)]))

    prompts = Dataset.from_dict({"input_ids": [[2, 3], [4, 5, 6], [7], [8, 9], [3, 3], [5, 2]]})
    ecfg = OmegaConf.create({"prompts": 4, "subsamples": 2, "samples_per_prompt": 1, "max_new_tokens": 4,
                             "temperature": 1.0, "batch_size": 4, "seed": 3, "examples": 2, "min_new_tokens": 0})
    quick = protocol.quick_eval({"sft": sft.state_dict(), "final": other.state_dict()}, sft, tok, reward, prompts, ecfg)
    full, _ = protocol.evaluate_policy(other, sft, tok, reward, prompts, OmegaConf.merge(ecfg, {"prompts": 3}))
    figures = {k for k in quick["final"] if k.endswith("_mean") and "_diff_" not in k}
    assert figures == {"reward_mean", "kl_mean", "kl_k1_mean", "kl_k3_mean", "completion_length_mean"}
    assert figures <= set(full) and quick["sft"]["kl_mean"] == 0.0 and len(quick["final"]["examples"]) == 2
    assert {"reward_diff_mean", "reward_diff_low", "reward_diff_high"} <= set(quick["final"])
    assert quick["final"]["reward_diff_mean"] == pytest.approx(quick["final"]["reward_mean"] - quick["sft"]["reward_mean"])
    assert not any("_diff_" in k for k in quick["sft"])  # the reference has no difference to itself
