"""w17 — RLHF with TRL: an SFT policy, a reward model from preference pairs, PPO against it; the RLHF policy wins
> 60% of preference votes against the SFT policy on held-out prompts.

    pytest acceptance -m "w17 and cpu"    # a 4-layer GPT-2 built from config on Pang & Lee's review sentences
    pytest acceptance -m "w17 and gpu1"   # GPT-2 124M (openai-community/gpt2) on IMDb, the same protocol at full size

TRL's classic sentiment task. Three stages, each a run directory of its own (resumed from its checkpoint when
interrupted, reused when complete with --reuse-artifacts): (1) SFT on the openings of movie reviews; (2) preference
pairs, the SFT policy answering each prompt twice at one temperature, the answer a sentiment classifier trained on
half the human labels finds more positive chosen, and a reward model trained with TRL's RewardTrainer, scored on
held-out pairs; (3) PPO (impl/w17_rlhf/ppo.py: clipped objective, value head, GAE, per-token KL penalty to the
frozen SFT policy, reward whitening). The judge is none of these: a stand-in for the human raters, a probe on a
pretrained sentence encoder's embeddings (MiniLM) fit on the half of the human labels the labeller never saw,
pointwise (each answer scored alone, so there is no order to swap); VADER's lexicon gives a second opinion. Beside
the win rate, a fluency LM and distinct-2 check that the RLHF policy still writes as well and as variedly as the
SFT policy, so repeating the reward's favourite words fails.
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
    rows = ["| prompt | SFT answer | RLHF answer | sentiment SFT | sentiment RLHF | verdict |", "|---|---|---|---|---|---|"]
    word = {1: "RLHF", -1: "SFT", 0: "tie"}
    rows += [f"| {_cell(e['prompt'])} | {_cell(e['sft'])} | {_cell(e['rlhf'])} | {e['sentiment_sft']} | "
             f"{e['sentiment_rlhf']} | {word[e['verdict']]} |" for e in m["examples"]]
    return "\n".join(rows)


def _pairs_markdown(m) -> str:
    rows = ["| prompt | chosen (more positive to the labeller) | rejected |", "|---|---|---|"]
    rows += [f"| {_cell(p['prompt'])} | {_cell(p['chosen'])} | {_cell(p['rejected'])} |" for p in m["sample_pairs"]]
    return "\n".join(rows)


def _context(r) -> dict:
    m = r.metrics
    return {
        "policy": m["policy"], "judge": m["judge"], "wins / losses / ties": f"{m['wins']} / {m['losses']} / {m['ties']}",
        "judged P(positive) rlhf / sft": f"{m['sentiment_rlhf']:.3f} / {m['sentiment_sft']:.3f}",
        "fluency rlhf / sft (nats per token)": f"{m['fluency_rlhf']:.3f} / {m['fluency_sft']:.3f}",
        "fluency_judge": m["fluency_judge"],
        "distinct_2 rlhf / sft": f"{m['distinct_2_rlhf']:.3f} / {m['distinct_2_sft']:.3f}",
        "distinct_1 rlhf / sft": f"{m['distinct_1_rlhf']:.3f} / {m['distinct_1_sft']:.3f}",
        "kl_to_reference_nats": m["kl_to_reference"], "reward_rlhf": m["reward_rlhf"], "reward_sft": m["reward_sft"],
        "repetition_rate rlhf / sft": f"{m['repetition_rate_rlhf']:.3f} / {m['repetition_rate_sft']:.3f}",
        "labeller (TF-IDF + logistic regression)": f"trained on {m['labeller_texts']} human labels; accuracy "
        f"{m['labeller_accuracy']:.3f} on {m['labeller_checked_on']} other training texts",
        "the judge on the labels": f"agrees with {m['judge_agrees_with_humans']:.1%} of the test side's human labels and "
        f"finds the chosen answer more positive on {m['judge_agrees_with_pairs']:.0%} of held-out pairs",
        "second opinion (VADER lexicon, not gated)": f"win rate {m['lexicon_win_rate']:.3f}; agrees with "
        f"{m['lexicon_agrees_with_humans']:.1%} of the human labels",
        "reward_model_pair_accuracy": m["pair_accuracy"],
        "reward_curve (PPO, raw reward-model score per iteration)": m["reward_curve"], "kl_curve": m["kl_curve"],
        "stage seconds (sft / reward / ppo / eval)": f"{m['sft_seconds']} / {m['reward_seconds']} / {m['ppo_seconds']} / "
        f"{m['eval_seconds']}", "runs": m["runs"], "answers_file": str(r.run_dir / "answers.jsonl"),
        "examples": _examples_markdown(m), "sample preference pairs": _pairs_markdown(m),
        **({"comparison: TRL GRPOTrainer on the same reward model": _grpo_markdown(m)} if m.get("grpo") else {}),
    }


def _grpo_markdown(m) -> str:
    """PPO (ours) and GRPO (TRL's) from the same SFT policy against the same reward model, judged the same way."""
    g = m["grpo"]
    rows = ["| policy | win rate vs SFT | VADER's | wins / losses / ties | P(positive) | fluency drop | diversity | reward | "
            "KL to SFT (nats) |", "|---|---|---|---|---|---|---|---|---|",
            f"| PPO (impl/w17_rlhf/ppo.py) | {m['win_rate']:.3f} | {m['lexicon_win_rate']:.3f} | "
            f"{m['wins']} / {m['losses']} / {m['ties']} | "
            f"{m['sentiment_rlhf']:.3f} | {m['fluency_drop']:.3f} | {m['diversity']:.3f} | {m['reward_rlhf']:.3f} | "
            f"{m['kl_to_reference']:.2f} |",
            f"| GRPO (TRL GRPOTrainer) | {g['win_rate']:.3f} | {g['lexicon_win_rate']:.3f} | "
            f"{g['wins']} / {g['losses']} / {g['ties']} | "
            f"{g['sentiment_rlhf']:.3f} | {g['fluency_drop']:.3f} | {g['diversity']:.3f} | {g['reward']:.3f} | "
            f"{g['kl_to_reference']:.2f} |",
            f"| SFT | - | - | - | {m['sentiment_sft']:.3f} | 0 | 1 | {m['reward_sft']:.3f} | 0 |"]
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
                        headline={"win rate against SFT": m["win_rate"], "judge": "MiniLM probe on held-out human labels"}, **_context(r))


@pytest.mark.check("w17", target="fluency_drop")
def test_the_rlhf_policy_writes_as_fluently_as_the_sft_policy(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _rlhf(seeded, runs)
        m = r.metrics
        scorecard.check(m["fluency_drop"], data=m["data"], fluency_rlhf=m["fluency_rlhf"], fluency_sft=m["fluency_sft"],
                        fluency_judge=m["fluency_judge"], examples=_examples_markdown(m))


@pytest.mark.check("w17", target="diversity")
def test_the_rlhf_policy_answers_as_variedly_as_the_sft_policy(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _rlhf(seeded, runs)
        m = r.metrics
        scorecard.check(m["diversity"], data=m["data"], distinct_2_rlhf=m["distinct_2_rlhf"],
                        distinct_2_sft=m["distinct_2_sft"], repetition_rate_rlhf=m["repetition_rate_rlhf"],
                        examples=_examples_markdown(m))


@pytest.mark.check("w17", target="pair_accuracy")
def test_the_reward_model_ranks_held_out_preference_pairs(spec, runs, scorecard):
    for seeded in scorecard.each_seed(spec):
        r = _rlhf(seeded, runs)
        m = r.metrics
        scorecard.check(m["pair_accuracy"], data=f"{m['heldout_pairs']} held-out pairs (of {m['heldout_pairs'] + m['train_pairs']}); {m['data']}",
                        baselines={"chance": 0.5, "untrained": m["untrained_pair_accuracy"],
                                   "sft_loglik": m["sft_loglik_pair_accuracy"]},
                        train_pair_accuracy=m["train_pair_accuracy"], sample_pairs=_pairs_markdown(m))
