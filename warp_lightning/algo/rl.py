"""The RL arithmetic of WARP.md, as pure tensor functions (no Lightning, no models).

Shapes: a batch holds P prompts x k samples, laid out prompt-major ([p0 s0, p0 s1, ..., p1 s0, ...]),
so `x.view(P, k)` groups the samples of one prompt.
"""

from __future__ import annotations

import torch

from warp_lightning.runtime import internals


def sequence_logprob(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(y|x) = sum of the log-probs of the completion tokens (mask = 1 up to and including EOS)."""
    return (token_logprobs * mask).sum(-1)


def sampled_kl(policy_logprob: torch.Tensor, anchor_logprob: torch.Tensor) -> torch.Tensor:
    """The sequence-level KL sample used in training: log pi_theta(y|x) - log pi_anchor(y|x)."""
    return policy_logprob - anchor_logprob


def kl_penalized_reward(reward: torch.Tensor, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """r_beta = r - beta * KL, with no gradient through either term (WARP.md: KL folded into the reward)."""
    return (reward - beta * kl).detach()


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """A_i = r_i - mean of the other k-1 rewards of the same prompt (the leave-one-out baseline)."""
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt, got k={k}")
    r = rewards.view(-1, k)
    baseline = (r.sum(-1, keepdim=True) - r) / (k - 1)
    return (r - baseline).reshape(rewards.shape)


def rloo_loss(advantages: torch.Tensor, logprob: torch.Tensor) -> torch.Tensor:
    """-mean(A * log pi_theta(y|x)): REINFORCE with the leave-one-out baseline."""
    return -(advantages.detach() * logprob).mean()


@torch.no_grad()
def ema_update_(anchor: list[torch.Tensor], policy: list[torch.Tensor], mu: float) -> None:
    """theta_ema <- (1 - mu) * theta_ema + mu * theta, in place (WARP.md: the anchor moves slowly)."""
    internals.foreach_lerp_(anchor, policy, mu)


def entropy_from_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary entropy -sum p log p over the last dimension."""
    return -(logprobs.exp() * logprobs).sum(-1)


def exact_kl_from_logprobs(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p(v) (log p(v) - log q(v)) over the last dimension (full vocabulary)."""
    return (logp.exp() * (logp - logq)).sum(-1)
