"""w17's sabotage twins, each on the cpu profile's own spec and counts (its SFT policy, pairs, reward model and 256
test prompts): the SFT policy sampled colder (T 0.5, 0.7) against itself at the evaluation temperature, PPO at
learning rate 0, a reward model trained on shuffled labels (and PPO on it), and a policy repeating the reward's
favourite words each fail a target the real run passes (the positive control, the same stages). Then PPO's
pieces (GAE, the clipped objective, whitening), the labeller and the judges, the preference file's checks (one
clear error, nothing written), stage reuse and resume, and the gpu1 path (a pretrained policy, an IMDb-format
local directory) shrunk onto this CPU."""
import json

import pytest
import torch

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.hf import resolve_model
from impl.core.profiles import load_profile, override
from impl.units import w17
from impl.w17_rlhf import ppo
from impl.w17_rlhf.data import Labelled, PreferenceDataError
from impl.w17_rlhf.judge import (FluencyJudge, LexiconJudge, SentenceEncoder, SentimentJudge, compare, degenerate,
                                  distinct_n, verdicts)
from impl.w17_rlhf.reward import Labeller
from tests.conftest import tiny_llama_dir

CPU = load_profile("cpu").milestone("w17")
GPU1 = load_profile("gpu1").milestone("w17")
TWIN = override(CPU, grpo=None)  # the comparison stage is not what a twin tests; every other stage is the profile's
SHRUNK = dict(policy={"scratch": {"n_layer": 2, "n_head": 2, "n_embd": 64}, "tokenizer": "bpe:1024"},
              sft={"steps": 60, "batch_size": 16}, pairs={"prompts": 48}, reward={"epochs": 1, "batch_size": 16},
              ppo={"iterations": 2, "batch_size": 8, "minibatch_size": 4, "epochs": 1}, test_prompts=16, grpo=None)


@pytest.fixture(scope="module")
def profile_runs(tmp_path_factory):
    """One artifacts root for the twins: the profile's SFT policy, pairs, reward model and PPO policy trained once,
    reused; under `python -m impl test` the acceptance check trained them moments before on this worker (share)."""
    return Runs("w17", "test", reuse=True, share=True, root=tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def real(profile_runs):
    """The positive control: the profile's own run (without the GRPO comparison)."""
    return adapters.w17_rlhf(TWIN, profile_runs).metrics


def _fails(name: str, m: dict) -> bool:
    target = CPU.targets[name]
    if name == "pair_accuracy":
        baselines = {"chance": 0.5, "untrained": m["untrained_pair_accuracy"], "sft_loglik": m["sft_loglik_pair_accuracy"]}
    else:
        baselines = None
    return not target.passes(target.checked_value(m[name], baselines))


def test_the_real_run_passes_every_target_it_is_the_twins_positive_control(real):
    assert [name for name in CPU.targets if _fails(name, real)] == [], {k: real[k] for k in CPU.targets}


# --- the sabotage twins ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("colder", ["sft_at_0.5", "sft_at_0.7"])
def test_the_sft_policy_sampled_colder_does_not_win(profile_runs, real, colder):
    """What temperature alone does: the pairs differ by the labeller, not by temperature, and the judge scores
    sentiment, not likelihood."""
    m = adapters.w17_rlhf(TWIN, profile_runs, sabotage=colder).metrics
    assert m["runs"] == real["runs"] and m["sabotage"] == colder
    assert _fails("win_rate", m), m["win_rate"]


def test_ppo_at_learning_rate_zero_answers_as_the_sft_policy_and_fails_the_win_rate(profile_runs, real):
    """Two iterations instead of the profile's: at learning rate 0 the policy after any number is the SFT policy."""
    m = adapters.w17_rlhf(override(TWIN, ppo={"lr": 0.0, "iterations": 2}), profile_runs).metrics
    assert m["ties"] == m["judged_prompts"] == CPU.test_prompts and m["win_rate"] == 0.5  # identical answers
    assert m["kl_to_reference"] == 0.0 and m["runs"]["reward"] == real["runs"]["reward"]
    assert _fails("win_rate", m)


def test_a_reward_model_on_shuffled_labels_fails_its_pair_accuracy_and_ppo_on_it_does_not_win(profile_runs, real):
    m = adapters.w17_rlhf(TWIN, profile_runs, shuffle_pairs=True).metrics
    assert m["runs"]["sft"] == real["runs"]["sft"] and m["runs"]["reward"] != real["runs"]["reward"]
    assert m["untrained_pair_accuracy"] == real["untrained_pair_accuracy"]
    assert _fails("pair_accuracy", m), m["pair_accuracy"]
    assert _fails("win_rate", m), m["win_rate"]


def test_a_policy_repeating_the_rewards_favourite_words_wins_on_sentiment_and_fails_fluency_and_diversity(
        profile_runs, real):
    m = adapters.w17_rlhf(TWIN, profile_runs, sabotage="favourite_words").metrics
    assert not _fails("win_rate", m), m["win_rate"]  # the judge alone would be fooled ...
    assert _fails("fluency_drop", m) and _fails("diversity", m), (m["fluency_drop"], m["diversity"])  # ... not the gates
    assert m["examples"][0]["rlhf"].split()[0] in m["favourite_words"]


# --- the labeller and the judges -----------------------------------------------------------------------------------
def test_the_labeller_learns_sentiment_from_human_labels():
    texts = ["a wonderful, moving film", "dull and boring", "funny and charming", "a tedious mess",
             "beautiful performances", "bad, too long"] * 3
    labeller = Labeller(Labelled(texts, [1, 0, 1, 0, 1, 0] * 3))
    pos, neg = labeller.positive(["a charming, wonderful story", "a boring, tedious story"])
    assert pos > 0.5 > neg and labeller.accuracy(Labelled(texts[:6], [1, 0, 1, 0, 1, 0])) == 1.0
    assert set(labeller.favourite_words(3)) <= {"wonderful", "moving", "funny", "charming", "beautiful", "performances",
                                                "film", "and", "a"}


def test_the_judge_learns_sentiment_from_its_own_human_labels_pointwise_and_ties_equal_answers():
    texts = ["a wonderful, moving film", "dull and boring", "funny and charming", "a tedious mess",
             "beautiful performances", "bad, too long"] * 3
    judge = SentimentJudge(Labelled(texts, [1, 0, 1, 0, 1, 0] * 3), str(resolve_model("fixture:minilm")))
    good, bad, flat = judge.score(["The film was"] * 3, [" wonderful and moving.", " dull and painful.", " long."])
    assert good > 0.5 > bad and judge.accuracy(Labelled(texts[:6], [1, 0, 1, 0, 1, 0])) == 1.0
    assert verdicts([good, bad, flat], [bad, good, flat]) == [1, -1, 0]
    m = compare(["a b c", "d e f"], ["a b c", "a b c"], [0.5, 0.1], [0.1, 0.1], [-2.0, -2.0], [-1.0, -1.0])
    assert m["win_rate"] == 0.75 and m["fluency_drop"] == 1.0 and m["diversity"] == pytest.approx(1.0 / 0.5)


def test_the_encoder_embeds_a_list_once_per_process_and_hands_out_copies(monkeypatch):
    encoder = SentenceEncoder(str(resolve_model("fixture:minilm")))
    texts = ["a list the twins judge again", "and again"]
    first = encoder.transform(texts)
    monkeypatch.setattr(encoder.model, "encode", lambda *a, **k: pytest.fail("embedded twice"))
    again = encoder.transform(iter(texts))
    assert (again == first).all() and first.shape == (2, 384)
    again[:] = 0  # a caller scribbling on its copy changes nothing remembered
    assert (encoder.transform(texts) == first).all()
    monkeypatch.undo()
    assert encoder.transform(texts[:1]).shape == (1, 384)  # another list is embedded


def test_the_fluency_judge_scores_each_answer_as_a_plain_forward_pass_of_prompt_and_answer(tmp_path):
    """Batched by length, padded, the LM head run only at the answers' positions: the mean log-likelihood of each
    answer's tokens as one unbatched forward pass of prompt + answer gives it; an empty answer is -inf."""
    import math

    judge = FluencyJudge(tiny_llama_dir(tmp_path / "judge"), batch_size=2)
    prompts = ["The film was", "A long, slow and rather dull opening to a film that", "It", "Great"]
    answers = [" good.", " never recovers from its first hour of nothing much.", " was fine and then it was not", ""]
    scores = judge.score(prompts, answers)
    for p, a, got in zip(prompts[:3], answers, scores):
        n = len(judge.tok(p)["input_ids"])
        ids = torch.tensor([judge.tok(p + a)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(judge.model(input_ids=ids).logits[0, :-1].float(), -1)
        alone = logp[n - 1:].gather(1, ids[0, n:, None]).mean().item()
        assert got == pytest.approx(alone, abs=1e-4)
    assert scores[3] == -math.inf


def test_the_lexicon_second_opinion_scores_sentiment_without_training():
    good, bad, flat = LexiconJudge().score(["The film was"] * 3, [" wonderful and moving.", " dull and painful.", " long."])
    assert good > 0 > bad and flat == 0.0


def test_degenerate_answers_and_distinct_n():
    assert degenerate("the cat sat on the cat sat") and degenerate("so so so so so") and degenerate("")
    assert not degenerate(" she walked to the village, and the rain began")
    assert distinct_n(["a b c", "a b d"], 1) == 4 / 6 and distinct_n(["a b c", "a b d"], 2) == 3 / 4


def test_gae_matches_a_hand_computation():
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.4]])
    adv, ret = w17.gae(rewards, values, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.4  # the last step: V after the answer is 0
    d1 = 0.0 + 0.4 - 0.2
    d0 = 0.0 + 0.2 - 0.5
    expect = torch.tensor([[d0 + 0.5 * (d1 + 0.5 * d2), d1 + 0.5 * d2, d2]])
    assert torch.allclose(adv, expect) and torch.allclose(ret, expect + values)


def test_the_clipped_objective_stops_pushing_past_the_clip_range():
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    new = torch.log(torch.tensor([1.5, 1.1, 0.5, 0.9]))  # ratios: two outside 1 +- 0.2, two inside
    pg, _, clipfrac, _ = ppo.ppo_losses(new, old, adv, torch.zeros(4), torch.zeros(4), torch.zeros(4), 0.2, 0.2)
    assert pg.item() == pytest.approx(-(1.2 + 1.1 - 0.8 - 0.9) / 4) and clipfrac.item() == 0.5
    w = ppo.whiten(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert abs(w.mean().item()) < 1e-6 and w.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


# --- bad input -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row, message", [({"prompt": "It was", "chosen": " a truth"}, "missing field 'rejected'"),
                                          ({"prompt": "It was", "chosen": " a truth", "rejected": "  "},
                                           "field 'rejected' is an empty answer")])
def test_a_bad_preference_file_is_one_clear_error_and_nothing_is_written(tmp_path, row, message):
    good = {"prompt": "She said", "chosen": " nothing at all.", "rejected": " blam wre Cable."}
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good] * 5 + [row]) + "\n")
    with pytest.raises(PreferenceDataError, match=f"pairs.jsonl:6: {message}"):
        adapters.w17_read_pairs(path)
    runs = Runs("w17", "test", root=tmp_path / "artifacts")
    with pytest.raises(PreferenceDataError, match=message):
        adapters.w17_rlhf(override(override(CPU, **SHRUNK), pairs={"file": str(path)}), runs)
    assert not (tmp_path / "artifacts").exists()


def test_pairs_the_labeller_cannot_tell_apart_are_one_clear_error(tmp_path):
    """No two answers differ by 1.0 in P(positive): no pair is left, and the error says which settings to change."""
    runs = Runs("w17", "test", root=tmp_path / "artifacts")
    with pytest.raises(PreferenceDataError, match=r"0 preference pairs \(generated\).*pairs.min_margin 1.0"):
        adapters.w17_rlhf(override(override(CPU, **SHRUNK), pairs={"min_margin": 1.0}), runs)
    assert not list((tmp_path / "artifacts" / "w17" / "reward").rglob("pairs.jsonl"))


# --- stages ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shrunk_runs(tmp_path_factory):
    return Runs("w17", "test", reuse=True, root=tmp_path_factory.mktemp("shrunk"))


def test_each_stage_is_its_own_run_and_a_later_change_reuses_the_earlier_stages(shrunk_runs):
    a = adapters.w17_rlhf(override(CPU, **SHRUNK), shrunk_runs).metrics
    b = adapters.w17_rlhf(override(override(CPU, **SHRUNK), ppo={"kl_coef": 0.5}), shrunk_runs).metrics
    assert a["runs"]["sft"] == b["runs"]["sft"] and a["runs"]["reward"] == b["runs"]["reward"]
    assert a["runs"]["ppo"] != b["runs"]["ppo"]
    again = adapters.w17_rlhf(override(CPU, **SHRUNK), shrunk_runs)
    assert again.reused and again.metrics["win_rate"] == a["win_rate"]


def test_an_interrupted_ppo_run_resumes_from_its_checkpoint(shrunk_runs, monkeypatch, tmp_path):
    """Checkpoint after iteration 1, iteration 2 logged but not checkpointed, killed in iteration 3: the resumed
    run writes each iteration's row once and reproduces the uninterrupted run's curves."""
    spec = override(override(CPU, **SHRUNK), ppo={"iterations": 3, "lr": 5e-5})
    calls = {"n": 0}
    real = ppo.ppo_losses

    def dies_in_the_third_iteration(*args):
        calls["n"] += 1  # two minibatches an iteration
        if calls["n"] == 3:  # the second iteration's first: no checkpoint after this one
            monkeypatch.setattr(ppo, "CHECKPOINT_EVERY", 100)
        if calls["n"] == 5:  # the third iteration's first
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(ppo, "CHECKPOINT_EVERY", 1)
    monkeypatch.setattr(ppo, "ppo_losses", dies_in_the_third_iteration)
    with pytest.raises(KeyboardInterrupt):
        adapters.w17_rlhf(spec, shrunk_runs)
    [run_dir] = [d for d in (shrunk_runs.root / "w17" / "ppo" / "test").iterdir()
                 if (d / "checkpoint.pt").exists() and not (d / "metrics.json").exists()]

    def read_log():
        return [json.loads(line)["iteration"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]

    assert read_log() == [1, 2] and torch.load(run_dir / "checkpoint.pt", weights_only=False)["iteration"] == 1
    monkeypatch.setattr(ppo, "ppo_losses", real)
    m = adapters.w17_rlhf(spec, shrunk_runs).metrics
    assert m["runs"]["ppo"] == str(run_dir) and not (run_dir / "checkpoint.pt").exists()
    assert read_log() == [1, 2, 3] and len(m["reward_curve"]) == 3  # iteration 2's row once, not twice
    from impl.w17_rlhf.run import stages

    prompts, s, r, _, _ = stages(spec, shrunk_runs)  # every stage reused: only the prompts are rebuilt
    straight = ppo.run(spec, prompts, s.run_dir / "model", r.run_dir / "model", tmp_path).metrics
    assert straight["reward_curve"] == m["reward_curve"] and straight["kl_curve"] == m["kl_curve"]


# --- the gpu1 path, shrunk -------------------------------------------------------------------------------------------
def imdb_dir(out, rows):
    """What `datasets` fetches for stanfordnlp/imdb (text, label), as one train parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [y for _, y in rows]}),
                   out / "train-00000-of-00001.parquet")
    return out


@pytest.mark.gpu_smoke
def test_the_gpu1_path_fine_tunes_a_pretrained_policy_on_imdb_format_data(tmp_path):
    """gpu1's protocol (a pretrained policy fine-tuned by SFT with its own tokenizer, IMDb from the hub, the fluency
    LM and the judge's sentence encoder from the hub) with the models replaced by tiny local directories and the
    offline MiniLM, the data by real Pang & Lee sentences in IMDb's parquet layout, and every size shrunk."""
    from impl.core.fixtures import read_documents

    rows = [(r["text"], r["label"]) for r in read_documents("pang-lee", "sentences.jsonl")][:1500]
    policy, judge = tiny_llama_dir(tmp_path / "policy", hidden=32), tiny_llama_dir(tmp_path / "judge")
    shrunk = {k: v for k, v in SHRUNK.items() if k != "policy"}  # gpu1's policy is pretrained, not built from config
    spec = override(override(GPU1, **shrunk), policy={"model": policy},
                    data={"local_dir": str(imdb_dir(tmp_path / "imdb", rows))},
                    judge={"fluency_model": judge, "sentiment_encoder": "fixture:minilm"},
                    sft={"steps": 10}, pairs={"prompts": 48, "min_margin": 0.0}, grpo={"steps": 2, "batch_size": 8, "num_generations": 4})
    m = adapters.w17_rlhf(spec, Runs("w17", "test", root=tmp_path / "artifacts")).metrics
    assert 0 <= m["win_rate"] <= 1 and m["wins"] + m["losses"] + m["ties"] == 16 and "local copy of stanfordnlp/imdb" in m["data"]
    assert m["policy"] == policy and len(m["kl_curve"]) == 2 and m["heldout_pairs"] > 0
    g = m["grpo"]  # the comparison row: TRL's GRPOTrainer on the same reward model, judged the same way
    assert len(g["reward_curve"]) == 2 and g["wins"] + g["losses"] + g["ties"] == 16
