"""w17's cases: PPO's per-token reward, advantages and its two clipped losses."""
from __future__ import annotations

import torch

from impl.units.cases import case, randn as _randn


@case("w17.kl_reward")
def _kl_reward(fn):
    B, T = 3, 5
    scores = _randn(B, seed=100, scale=2.0)
    logp = _randn(B, T, seed=101, scale=0.5) - 2.0
    ref_logp = logp + _randn(B, T, seed=102, scale=0.3)  # log pi - log pi_ref of both signs
    keep = (scores.clone(), logp.clone(), ref_logp.clone())
    rewards = fn(scores, logp, ref_logp, beta=0.1)
    unchanged = float(all(torch.equal(a, b) for a, b in zip(keep, (scores, logp, ref_logp))))
    return {"rewards": rewards, "inputs_unchanged": unchanged}


@case("w17.gae")
def _gae(fn):
    B, T = 3, 6
    rewards = _randn(B, T, seed=110, scale=0.2)
    rewards[:, -1] += _randn(B, seed=111)  # a score at the end, as kl_reward makes them
    values = _randn(B, T, seed=112, scale=0.5)
    out = {}
    for tag, gamma, lam in (("typical", 0.99, 0.95), ("short", 0.9, 0.5)):  # lam strictly between 0 and 1
        adv, ret = fn(rewards, values, gamma=gamma, lam=lam)
        out[f"{tag}.advantages"], out[f"{tag}.returns"] = adv, ret
    return out


@case("w17.ppo_policy_loss")
def _policy_loss(fn):
    old_logp = _randn(4, 6, seed=120, scale=0.5) - 2.0
    new_logp = (old_logp + _randn(4, 6, seed=121, scale=0.3)).requires_grad_()  # ratios inside and outside 1 +- 0.2
    adv = _randn(4, 6, seed=122)  # advantages of both signs
    loss = fn(new_logp, old_logp, adv, clip=0.2)
    (grad,) = torch.autograd.grad(loss, new_logp)  # clipped elements carry no gradient
    return {"loss": loss, "grad": grad}


@case("w17.clipped_value_loss")
def _value_loss(fn):
    old_values = _randn(4, 6, seed=130, scale=0.5)
    values = (old_values + _randn(4, 6, seed=131, scale=0.3)).requires_grad_()  # moves inside and outside 0.2
    returns = old_values + _randn(4, 6, seed=132, scale=0.5)
    loss = fn(values, old_values, returns, clip_value=0.2)
    (grad,) = torch.autograd.grad(loss, values)
    return {"loss": loss, "grad": grad}
