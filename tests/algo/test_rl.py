"""The RL arithmetic of algo/rl.py against hand computations: RLOO advantages, the KL terms, the EMA update."""

import pytest
import torch

from warp_lightning.algo import rl


def test_rloo_advantages_hand_computation():
    # two prompts, k = 3
    r = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    a = rl.rloo_advantages(r, 3)
    expected = [1 - (2 + 6) / 2, 2 - (1 + 6) / 2, 6 - (1 + 2) / 2, 0 - 1.5, 0 - 1.5, 3 - 0.0]
    assert a.tolist() == pytest.approx(expected)
    # advantages of one prompt sum to zero (k/(k-1) * centred rewards)
    assert a.view(2, 3).sum(-1).abs().max() < 1e-6


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match="k >= 2"):
        rl.rloo_advantages(torch.zeros(4), 1)


def test_ema_update_formula():
    anchor = [torch.tensor([0.0, 10.0]), torch.tensor([[1.0]])]
    policy = [torch.tensor([1.0, 0.0]), torch.tensor([[3.0]])]
    rl.ema_update_(anchor, policy, 0.01)
    assert anchor[0].tolist() == pytest.approx([0.01, 9.9])
    assert anchor[1].item() == pytest.approx(0.99 * 1 + 0.01 * 3)
    assert policy[0].tolist() == [1.0, 0.0]  # the policy is untouched


def test_rloo_loss_gradient_equals_reinforce_with_baseline_by_hand():
    """Toy categorical policy pi = softmax(theta) over 3 actions, one prompt, k = 3 samples."""
    theta = torch.tensor([0.2, -0.5, 1.0], requires_grad=True)
    actions = torch.tensor([0, 2, 2])
    rewards = torch.tensor([1.0, 0.0, 4.0])
    logprob = torch.log_softmax(theta, -1)[actions]
    loss = rl.rloo_loss(rl.rloo_advantages(rewards, 3), logprob)
    loss.backward()

    p = torch.softmax(theta.detach(), -1)
    grad = torch.zeros(3)
    for a, r, others in [(0, 1.0, [0.0, 4.0]), (2, 0.0, [1.0, 4.0]), (2, 4.0, [1.0, 0.0])]:
        baseline = sum(others) / 2
        score = -p.clone()  # d log pi(a) / d theta = onehot(a) - p
        score[a] += 1
        grad += (r - baseline) * score
    assert torch.allclose(theta.grad, -grad / 3, atol=1e-6)
