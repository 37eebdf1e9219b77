"""w17's units, the reference implementations: the pieces of PPO for RLHF (impl/w17_rlhf/ppo.py, written out as the
algorithm) that a learner can write and test alone (tests/units/, `python -m impl units -m w17`). ppo.py calls them
through `impl.units.w17`, so a learner's version replaces these in the PPO run.

Shapes: B answers (a batch of rollouts), T answer tokens (every answer has T tokens; the last is position T-1).
"""
from __future__ import annotations

import torch

from impl.units import unit


@unit(rtol=1e-6, atol=1e-7)
def kl_reward(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """The per-token reward of RLHF's PPO (Ziegler et al. 2019): -beta * (log pi(a_t) - log pi_ref(a_t)) at every
    answer token (the per-token KL estimate, penalised), plus the reward model's score of the whole answer at the
    last token only. scores (B,), logp and ref_logp (B, T): the log-probability of each sampled answer token under
    the policy and under the frozen reference -> rewards (B, T). The inputs are not changed."""
    rewards = -beta * (logp - ref_logp)
    rewards[:, -1] += scores
    return rewards


@unit(rtol=1e-5, atol=1e-6)
def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over per-token rewards and values, both (B, T):
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, computed from the last token back; the
    value after the last token is 0 (the episode ends with the answer) and so is A_T. Returns (advantages,
    returns), both (B, T), returns = advantages + values."""
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_v = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv, adv + values


@unit(rtol=1e-5, atol=1e-6)
def ppo_policy_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    clip: float) -> torch.Tensor:
    """PPO's clipped surrogate objective as a loss to minimise (Schulman et al. 2017): with the ratio
    r = pi / pi_old = exp(new_logp - old_logp), the mean over every element of max(-A r, -A clip(r, 1 - clip,
    1 + clip)). new_logp, old_logp, advantages: the same shape, e.g. (B, T) -> a scalar (differentiable in
    new_logp)."""
    ratio = torch.exp(new_logp - old_logp)
    return torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()


@unit(rtol=1e-5, atol=1e-6)
def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip_value: float) -> torch.Tensor:
    """PPO's clipped value loss: the new value prediction may move at most clip_value from the rollout's
    (V_clip = old_values + clip(values - old_values, -clip_value, clip_value)), and the loss is
    0.5 * the mean over every element of max((values - returns)^2, (V_clip - returns)^2). values, old_values,
    returns: the same shape, e.g. (B, T) -> a scalar (differentiable in values)."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    return 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2).mean()
