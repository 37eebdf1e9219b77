"""w17's unit tests are sharp: for each unit a plausible wrong implementation fails its snapshot (the twins).
The four units are ppo.py's own code, moved (no library computes them here: TRL 1.x has no PPOTrainer)."""
import pytest
import torch

from impl import units
from impl.units import check


def _ref(name):
    return units.catalogue("w17")[name]


# --- kl_reward -------------------------------------------------------------------------------------------------
def kl_reward_with_the_sign_flipped(scores, logp, ref_logp, beta):  # rewards moving away from the reference
    return _ref("kl_reward")(scores, logp, ref_logp, -beta)


def kl_reward_with_the_score_on_every_token(scores, logp, ref_logp, beta):
    return -beta * (logp - ref_logp) + scores[:, None]


def kl_reward_in_place(scores, logp, ref_logp, beta):  # right numbers, but the policy's log-probs overwritten
    rewards = logp.sub_(ref_logp).mul_(-beta)
    rewards[:, -1] += scores
    return rewards


# --- gae -------------------------------------------------------------------------------------------------------
def gae_with_lambda_one(rewards, values, gamma, lam):  # lam ignored: Monte-Carlo returns minus V
    return _ref("gae")(rewards, values, gamma, 1.0)


def gae_with_lambda_zero(rewards, values, gamma, lam):  # lam ignored: one-step TD errors
    return _ref("gae")(rewards, values, gamma, 0.0)


def gae_bootstrapping_past_the_answer(rewards, values, gamma, lam):  # V after the last token taken as V_{T-1}
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        next_v = values[:, min(t + 1, rewards.shape[1] - 1)]
        last = rewards[:, t] + gamma * next_v - values[:, t] + gamma * lam * last
        adv[:, t] = last
    return adv, adv + values


# --- ppo_policy_loss -------------------------------------------------------------------------------------------
def policy_loss_without_the_clip(new_logp, old_logp, advantages, clip):
    return (-advantages * torch.exp(new_logp - old_logp)).mean()


def policy_loss_with_min_instead_of_max(new_logp, old_logp, advantages, clip):  # the optimistic bound
    ratio = torch.exp(new_logp - old_logp)
    return torch.min(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()


# --- clipped_value_loss ----------------------------------------------------------------------------------------
def value_loss_without_the_clip(values, old_values, returns, clip_value):
    return 0.5 * ((values - returns) ** 2).mean()


def value_loss_clipped_around_the_returns(values, old_values, returns, clip_value):
    v_clipped = returns + torch.clamp(values - returns, -clip_value, clip_value)
    return 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2).mean()


TWINS = [
    ("kl_reward", kl_reward_with_the_sign_flipped),
    ("kl_reward", kl_reward_with_the_score_on_every_token),
    ("kl_reward", kl_reward_in_place),
    ("gae", gae_with_lambda_one),
    ("gae", gae_with_lambda_zero),
    ("gae", gae_bootstrapping_past_the_answer),
    ("ppo_policy_loss", policy_loss_without_the_clip),
    ("ppo_policy_loss", policy_loss_with_min_instead_of_max),
    ("clipped_value_loss", value_loss_without_the_clip),
    ("clipped_value_loss", value_loss_clipped_around_the_returns),
]


def test_every_unit_has_a_twin():
    assert {name for name, _ in TWINS} == set(units.catalogue("w17"))


@pytest.mark.parametrize("name,twin", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_a_plausible_wrong_unit_fails_its_snapshot(name, twin):
    status, why = check.check("w17", name, twin)
    assert status != "pass", f"{twin.__name__} passed the {name} snapshot"


def test_gae_written_as_a_discounted_sum_passes_within_the_stated_tolerance():
    """A different order of float32 operations (A_t as sum_k (gamma lam)^k delta_{t+k}, vectorised) is right."""
    def gae_as_a_sum(rewards, values, gamma, lam):
        T = rewards.shape[1]
        next_v = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
        delta = rewards + gamma * next_v - values
        k = torch.arange(T)
        weights = ((gamma * lam) ** (k[None, :] - k[:, None]).clamp(min=0).double()).float()
        adv = delta @ (weights * (k[None, :] >= k[:, None])).T
        return adv, adv + values
    assert check.check("w17", "gae", gae_as_a_sum) == ("pass", "")


def test_ppo_losses_is_the_two_units():
    """ppo.py's ppo_losses returns exactly the units' losses (one implementation), plus its logged statistics."""
    from impl.w17_rlhf import ppo

    g = torch.Generator().manual_seed(0)
    old, adv = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    new = old + 0.3 * torch.randn(3, 4, generator=g)
    v_old, ret = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    v = v_old + 0.3 * torch.randn(3, 4, generator=g)
    pg, vf, _, _ = ppo.ppo_losses(new, old, adv, v, v_old, ret, 0.2, 0.2)
    assert torch.equal(pg, units.w17.ppo_policy_loss(new, old, adv, 0.2))
    assert torch.equal(vf, units.w17.clipped_value_loss(v, v_old, ret, 0.2))
