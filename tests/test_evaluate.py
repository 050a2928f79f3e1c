"""The evaluation protocol: intervals by hand, exact KL by brute force, KL(model || model) = 0."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from warp_lightning.algo.rl import exact_kl_from_logprobs
from warp_lightning.eval.protocol import subsample_indices
from warp_lightning.eval.stats import distinct_n, mean_ci95
from warp_lightning.policy.logprobs import completion_logprobs
from warp_lightning.policy.sampling import Rollout


def test_ci95_matches_hand_computation():
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = sqrt(2.5), t_{0.975,4} = 2.776
    assert mean == 3.0 and half == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)


def test_subsamples_are_deterministic_distinct_and_sized():
    a, b = subsample_indices(300, 5, 100, seed=0), subsample_indices(300, 5, 100, seed=0)
    assert a == b and all(len(set(s)) == 100 for s in a) and a[0] != a[1]


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


def test_results_table_is_model_reward_kl_with_intervals():
    from warp_lightning.eval.protocol import results_table

    m = {"reward_mean": 0.8, "reward_ci95": 0.0371, "kl_mean": 9.935, "kl_ci95": 0.331, "completion_length_mean": 23.0,
         "completion_length_ci95": 0.62, "distinct_1": 0.179, "distinct_2": 0.587}
    lines = results_table({"WARP": m}).splitlines()
    assert lines[0] == ("| model | mean reward | mean KL(pi \\|\\| pi_sft) | completion length | "
                        "distinct-1 / distinct-2 |")
    assert lines[2] == "| WARP | 0.800 ± 0.037 | 9.94 ± 0.33 | 23.0 ± 0.6 | 0.179 / 0.587 |"
