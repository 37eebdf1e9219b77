"""w17 — RLHF with TRL: an SFT policy, a reward model from preference pairs, PPO against it; the RLHF policy wins
> 60% of preference votes against the SFT policy on held-out prompts.

    pytest acceptance -m "w17 and cpu"    # a 4-layer GPT-2 built from config on Austen, judged by SmolLM2-135M-Instruct
    pytest acceptance -m "w17 and gpu1"   # GPT-2 124M (openai-community/gpt2), the same protocol at full size

Three stages, each a run directory of its own (resumed from its checkpoint when interrupted, reused when complete
with --reuse-artifacts): (1) SFT on prompt + continuation windows from training chapters; (2) preference pairs, the SFT
policy answering each prompt at two temperatures, chosen = the low-temperature answer (the rule is in the
profile; the judge's log-likelihood of both sets is recorded as its justification), and a reward model trained
with TRL's RewardTrainer, scored on held-out pairs; (3) PPO (impl/w17_rlhf/ppo.py: clipped objective, value head,
GAE, per-token KL penalty to the frozen SFT policy, reward whitening). The judge is not the reward model: a
stronger pretrained model's per-token log-likelihood, pointwise (each answer scored alone given its prompt, so
position bias cannot arise and there is no order to swap; a pairwise judge would be run in both orders), with
repetitive answers counted as losses, so a policy that games the reward model by repeating itself fails.
"""
import pytest

from impl import adapters

_runs: dict[str, object] = {}


def _rlhf(spec, runs):
    """One run per spec in this process, read by every check."""
    key = spec.model_dump_json()
    if key not in _runs:
        _runs[key] = adapters.w17_rlhf(spec, runs)
    return _runs[key]


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")[:160]


def _examples_markdown(m) -> str:
    rows = ["| prompt | SFT answer | RLHF answer | judge SFT | judge RLHF | verdict |", "|---|---|---|---|---|---|"]
    word = {1: "RLHF", -1: "SFT", 0: "tie"}
    rows += [f"| {_cell(e['prompt'])} | {_cell(e['sft'])} | {_cell(e['rlhf'])} | {e['judge_sft']} | {e['judge_rlhf']} | "
             f"{word[e['verdict']]} |" for e in m["examples"]]
    return "\n".join(rows)


def _pairs_markdown(m) -> str:
    rows = ["| prompt | chosen (low temperature) | rejected (high temperature) |", "|---|---|---|"]
    rows += [f"| {_cell(p['prompt'])} | {_cell(p['chosen'])} | {_cell(p['rejected'])} |" for p in m["sample_pairs"]]
    return "\n".join(rows)


def _context(r) -> dict:
    m = r.metrics
    return {
        "policy": m["policy"], "judge": f"{m['judge']}: mean per-token log-likelihood of the answer given the prompt "
        "(pointwise; a repetitive answer loses)", "wins / losses / ties": f"{m['wins']} / {m['losses']} / {m['ties']}",
        "judged_score_rlhf": m["judged_score_rlhf"], "judged_score_sft": m["judged_score_sft"],
        "kl_to_reference_nats": m["kl_to_reference"], "reward_rlhf": m["reward_rlhf"], "reward_sft": m["reward_sft"],
        "repetition_rate_rlhf": m["repetition_rate_rlhf"], "repetition_rate_sft": m["repetition_rate_sft"],
        "distinct_1 rlhf / sft": f"{m['distinct_1_rlhf']:.3f} / {m['distinct_1_sft']:.3f}",
        "distinct_2 rlhf / sft": f"{m['distinct_2_rlhf']:.3f} / {m['distinct_2_sft']:.3f}",
        "reward_model_pair_accuracy": m["pair_accuracy"],
        "chosen rule (low temperature) vs the judge": f"judge log-likelihood chosen {m['rule_judge_loglik_chosen']:.3f} vs "
        f"rejected {m['rule_judge_loglik_rejected']:.3f}; the judge agrees on {m['rule_judge_agreement']:.0%} of held-out pairs",
        "reward_curve (PPO, raw reward-model score per iteration)": m["reward_curve"], "kl_curve": m["kl_curve"],
        "stage seconds (sft / reward / ppo / eval)": f"{m['sft_seconds']} / {m['reward_seconds']} / {m['ppo_seconds']} / "
        f"{m['eval_seconds']}", "runs": m["runs"], "answers_file": str(r.run_dir / "answers.jsonl"),
        "examples": _examples_markdown(m), "sample preference pairs": _pairs_markdown(m),
        **({"comparison: TRL GRPOTrainer on the same reward model": _grpo_markdown(m)} if m.get("grpo") else {}),
    }


def _grpo_markdown(m) -> str:
    """PPO (ours) and GRPO (TRL's) from the same SFT policy against the same reward model, judged the same way."""
    g = m["grpo"]
    rows = ["| policy | win rate vs SFT | wins / losses / ties | judged score | reward | KL to SFT (nats) | repetition | distinct-1 |",
            "|---|---|---|---|---|---|---|---|",
            f"| PPO (impl/w17_rlhf/ppo.py) | {m['win_rate']:.3f} | {m['wins']} / {m['losses']} / {m['ties']} | "
            f"{m['judged_score_rlhf']:.3f} | {m['reward_rlhf']:.3f} | {m['kl_to_reference']:.2f} | "
            f"{m['repetition_rate_rlhf']:.3f} | {m['distinct_1_rlhf']:.3f} |",
            f"| GRPO (TRL GRPOTrainer) | {g['win_rate']:.3f} | {g['wins']} / {g['losses']} / {g['ties']} | "
            f"{g['judged_score_rlhf']:.3f} | {g['reward']:.3f} | {g['kl_to_reference']:.2f} | "
            f"{g['repetition_rate_rlhf']:.3f} | {g['distinct_1_rlhf']:.3f} |",
            f"| SFT | - | - | {m['judged_score_sft']:.3f} | {m['reward_sft']:.3f} | 0 | {m['repetition_rate_sft']:.3f} | "
            f"{m['distinct_1_sft']:.3f} |"]
    return "\n".join(rows)


def _curve(m) -> list:
    """PPO's reward curve: the reward model's mean raw score of each iteration's rollouts."""
    return [(i + 1, v) for i, v in enumerate(m["reward_curve"])]


@pytest.mark.check("w17", target="win_rate")
def test_the_rlhf_policy_wins_preference_votes_against_the_sft_policy(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _rlhf(seeded, runs)
        m = r.metrics
        scorecard.check(m["win_rate"], data=m["data"], curve=_curve(m), trivial={"the SFT policy against itself": 0.5},
                        headline={"win rate against SFT": m["win_rate"], "judge": m["judge"]}, **_context(r))


@pytest.mark.check("w17", target="judge_margin")
def test_the_judge_scores_the_rlhf_policy_above_the_sft_policy(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _rlhf(seeded, runs)
        m = r.metrics
        scorecard.check(m["judged_score_rlhf"], data=m["data"], curve=_curve(m), baselines={"sft": m["judged_score_sft"]},
                        **_context(r))


@pytest.mark.check("w17", target="pair_accuracy")
def test_the_reward_model_ranks_held_out_preference_pairs(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _rlhf(seeded, runs)
        m = r.metrics
        scorecard.check(m["pair_accuracy"], data=f"{m['heldout_pairs']} held-out pairs (of {m['heldout_pairs'] + m['train_pairs']}); {m['data']}",
                        baselines={"chance": 0.5, "untrained": m["untrained_pair_accuracy"]},
                        train_pair_accuracy=m["train_pair_accuracy"], sample_pairs=_pairs_markdown(m))
