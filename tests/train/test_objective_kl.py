"""The KL term of the RLOO objective points the right way: KL = log pi_theta - log pi_anchor (not the reverse),
so moving away from the anchor costs reward; and the front table prints eta as given."""

import pytest
import torch
from test_train_step import rollout_of, sequence_logprobs, tiny_policy

from warp_lightning.algo import rl
from warp_lightning.train.module import rloo_objective


def test_objective_penalises_the_log_ratio_to_the_anchor_in_its_order():
    policy, anchor, k, beta = tiny_policy(0), tiny_policy(1).requires_grad_(False), 4, 0.5
    rollout = rollout_of(policy, [[1, 2, 3], [4, 5]], k)
    reward = torch.zeros(2 * k)
    terms = rloo_objective(policy, anchor, rollout, reward, kl_coef=beta, k=k)
    log_ratio = sequence_logprobs(policy, rollout) - sequence_logprobs(anchor, rollout)
    torch.testing.assert_close(terms["kl"], log_ratio)
    # by hand: A_i = -beta * (lr_i - mean of the other k-1 log-ratios of its prompt)
    lr = log_ratio.view(-1, k)
    expected = -beta * (lr - (lr.sum(-1, keepdim=True) - lr) / (k - 1))
    torch.testing.assert_close(terms["advantages"], expected.reshape(-1))
    # the samples the policy likes more than the anchor does get the lowest advantage of their prompt
    assert (terms["advantages"].view(-1, k).argmin(-1) == lr.argmax(-1)).all()


def test_a_step_with_only_the_kl_term_brings_the_policy_towards_the_anchor():
    """With no reward, one RLOO step lowers the log-ratio of the samples the policy over-weights most."""
    policy, anchor, k = tiny_policy(0), tiny_policy(1).requires_grad_(False), 8
    rollout = rollout_of(policy, [[1, 2, 3], [4, 5]], k)
    before = sequence_logprobs(policy, rollout) - sequence_logprobs(anchor, rollout)
    rloo_objective(policy, anchor, rollout, torch.zeros(2 * k), kl_coef=1.0, k=k)["loss"].backward()
    torch.optim.SGD(policy.parameters(), lr=0.05).step()
    after = sequence_logprobs(policy, rollout) - sequence_logprobs(anchor, rollout)
    top = before.view(-1, k).argmax(-1)
    rows = torch.arange(2) * k + top
    assert (after[rows] < before[rows]).all(), (before, after)
    assert rl.sampled_kl(after, torch.zeros_like(after)).mean() < before.mean()


@pytest.mark.parametrize("eta", [0.25, 0.75, 0.5, 1.0, 1.5])
def test_front_table_prints_eta_as_given(eta):
    from warp_lightning.eval.report import front_markdown

    row = {"curve": "warp", "kind": "liti", "eta": eta, "step": "", "reward_mean": 0.5, "reward_ci95": 0.1,
           "judge_mean": 0.4, "judge_ci95": 0.1, "kl_mean": 1.0, "kl_ci95": 0.2}
    cells = front_markdown([row]).splitlines()[-1].split("|")
    assert cells[2].strip() == f"{eta:g}" + (" (extrapolation)" if eta > 1 else "")


def test_gradient_accumulation_is_refused_in_one_line_the_ema_would_move_per_micro_batch():
    from omegaconf import OmegaConf

    from warp_lightning import UserError
    from warp_lightning.train.checks import check_trainer

    cfg = OmegaConf.create({"trainer": {"strategy": "auto", "devices": 1, "num_nodes": 1}, "warp": {"runs": 2}})
    check_trainer(cfg)
    cfg.trainer.accumulate_grad_batches = 2
    with pytest.raises(UserError, match=r"^trainer.accumulate_grad_batches=2 is invalid: must be 1"):
        check_trainer(cfg)
