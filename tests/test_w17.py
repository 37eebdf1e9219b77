"""w17's sabotage twins (PPO at learning rate 0 equals the SFT policy and fails the win-rate and judged-margin
targets; a reward model trained on shuffled pairs fails its pair-accuracy target; a policy that games the reward
model by repeating itself loses under the judge), PPO's pieces (GAE, the clipped objective, whitening), the
preference file's checks (one clear error, nothing written), stage reuse, and the gpu1 path (a pretrained
policy and judge from directories) shrunk onto this CPU."""
import json

import pytest
import torch

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.profiles import load_profile, override
from impl.units import w17
from impl.w17_rlhf import ppo
from impl.w17_rlhf.data import PreferenceDataError
from impl.w17_rlhf.judge import degenerate, distinct_n, verdicts
from tests.conftest import tiny_llama_dir

CPU = load_profile("cpu").milestone("w17")
GPU1 = load_profile("gpu1").milestone("w17")
SHRUNK = dict(sft={"steps": 150, "batch_size": 32}, pairs={"prompts": 128},
              reward={"epochs": 2, "batch_size": 16}, ppo={"iterations": 2, "batch_size": 8, "minibatch_size": 4, "epochs": 1},
              test_prompts=16)


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return tiny_llama_dir(tmp_path_factory.mktemp("judge"))


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory):
    """One artifacts root for the module: the shrunk SFT run (and its tokenizer) is trained once and reused."""
    return Runs("w17", "test", reuse=True, root=tmp_path_factory.mktemp("artifacts"))


def shrunk(spec, judge_dir, **more):
    small = override(spec, policy={"scratch": {"n_layer": 2, "n_head": 2, "n_embd": 64}, "tokenizer": "bpe:1024"},
                     judge={"model": judge_dir}, **SHRUNK)
    return override(small, **more)


def _fails(target, value, baselines=None) -> bool:
    return not target.passes(target.checked_value(value, baselines))


# --- the sabotage twins ------------------------------------------------------------------------------------------
def test_ppo_at_learning_rate_zero_answers_as_the_sft_policy_and_fails_the_win_rate_targets(shared_runs, judge_dir):
    m = adapters.w17_rlhf(shrunk(CPU, judge_dir, ppo={"lr": 0.0}), shared_runs).metrics
    assert m["ties"] == m["judged_prompts"] == 16 and m["win_rate"] == 0.5  # identical answers: every vote a tie
    assert m["kl_to_reference"] == 0.0
    assert _fails(CPU.targets["win_rate"], m["win_rate"])
    assert _fails(CPU.targets["judge_margin"], m["judged_score_rlhf"], {"sft": m["judged_score_sft"]})
    assert len(m["reward_curve"]) == 2 and m["runs"]["sft"] and m["pair_accuracy"] >= 0


def test_a_reward_model_trained_on_shuffled_pairs_fails_its_pair_accuracy_target(shared_runs, judge_dir):
    """The cpu target on a smaller SFT policy's pairs: the same reward training passes it, and fails it with half
    the labels swapped."""
    target = CPU.targets["pair_accuracy"]
    real, shuffled = (adapters.w17_rlhf(shrunk(CPU, judge_dir, ppo={"iterations": 1}), shared_runs,
                                        shuffle_pairs=sh).metrics for sh in (False, True))
    assert shuffled["shuffle_pairs"] and shuffled["untrained_pair_accuracy"] == real["untrained_pair_accuracy"]
    base = lambda m: {"chance": 0.5, "untrained": m["untrained_pair_accuracy"]}  # noqa: E731
    assert _fails(target, shuffled["pair_accuracy"], base(shuffled)), shuffled["pair_accuracy"]
    assert not _fails(target, real["pair_accuracy"], base(real)), real["pair_accuracy"]


def test_a_policy_that_games_the_reward_model_by_repeating_itself_fails_under_the_judge():
    """A likelihood judge prefers repetition (SmolLM2 finds "the the the ..." likelier than Austen's own words);
    the degenerate answers still lose every vote, so the win rate and the judged margin fail."""
    prompts = ["It was a truth universally acknowledged, that", "Emma Woodhouse, handsome, clever, and",
               "The family of Dashwood had long been", "Sir Walter Elliot, of Kellynch Hall, was a man who"]
    honest = [" a single man in possession of a good fortune must be in want of a wife.",
              " rich, with a comfortable home and happy disposition, seemed to unite some blessings.",
              " settled in Sussex. Their estate was large, and their residence was at Norland Park.",
              " for his own amusement, never took up any book but the Baronetage."]
    hacked = [" the the the the the the the the the the the the", " and and and and and and and and and and",
              " of the of the of the of the of the of the", " was was was was was was was was was was"]
    m = adapters.w17_judge(CPU, prompts, hacked, honest)
    assert m["judge_loglik_rlhf"] > m["judge_loglik_sft"]  # the raw likelihood is fooled ...
    assert m["repetition_rate_rlhf"] == 1.0 and m["losses"] == 4 and m["win_rate"] == 0.0  # ... the verdicts are not
    assert _fails(CPU.targets["win_rate"], m["win_rate"])
    assert _fails(CPU.targets["judge_margin"], m["judged_score_rlhf"], {"sft": m["judged_score_sft"]})
    assert m["distinct_1_rlhf"] < m["distinct_1_sft"]


# --- the judge's rules and PPO's pieces ----------------------------------------------------------------------------
def test_degenerate_answers_ties_and_distinct_n():
    assert degenerate("the cat sat on the cat sat") and degenerate("so so so so so") and degenerate("")
    assert not degenerate(" she walked to the village, and the rain began")
    assert verdicts([-1.0, -2.0, -1.0, -3.0], [-2.0, -1.0, -1.0, -1.0], [False, False, False, True],
                    [False, False, False, True]) == [1, -1, 0, 0]
    assert verdicts([-1.0], [-5.0], [True], [False]) == [-1]  # a degenerate answer loses whatever its likelihood
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
def test_a_bad_preference_file_is_one_clear_error_and_nothing_is_written(tmp_path, judge_dir, row, message):
    good = {"prompt": "She said", "chosen": " nothing at all.", "rejected": " blam wre Cable."}
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good] * 5 + [row]) + "\n")
    with pytest.raises(PreferenceDataError, match=f"pairs.jsonl:6: {message}"):
        adapters.w17_read_pairs(path)
    runs = Runs("w17", "test", root=tmp_path / "artifacts")
    with pytest.raises(PreferenceDataError, match=message):
        adapters.w17_rlhf(shrunk(CPU, judge_dir, pairs={"file": str(path)}), runs)
    assert not (tmp_path / "artifacts").exists()


# --- stages ----------------------------------------------------------------------------------------------------------
def test_each_stage_is_its_own_run_and_a_later_change_reuses_the_earlier_stages(shared_runs, judge_dir):
    a = adapters.w17_rlhf(shrunk(CPU, judge_dir, ppo={"lr": 0.0}), shared_runs).metrics
    b = adapters.w17_rlhf(shrunk(CPU, judge_dir, ppo={"lr": 0.0, "kl_coef": 0.5}), shared_runs).metrics
    assert a["runs"]["sft"] == b["runs"]["sft"] and a["runs"]["reward"] == b["runs"]["reward"]
    assert a["runs"]["ppo"] != b["runs"]["ppo"]
    again = adapters.w17_rlhf(shrunk(CPU, judge_dir, ppo={"lr": 0.0}), shared_runs)
    assert again.reused and again.metrics["win_rate"] == a["win_rate"]


def test_an_interrupted_ppo_run_resumes_from_its_checkpoint(shared_runs, judge_dir, monkeypatch, tmp_path):
    """Checkpoint after iteration 1, iteration 2 logged but not checkpointed, killed in iteration 3: the resumed
    run writes each iteration's row once and reproduces the uninterrupted run's curves."""
    spec = shrunk(CPU, judge_dir, ppo={"iterations": 3, "lr": 5e-5})
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
        adapters.w17_rlhf(spec, shared_runs)
    [run_dir] = [d for d in (shared_runs.root / "w17" / "ppo" / "test").iterdir()
                 if (d / "checkpoint.pt").exists() and not (d / "metrics.json").exists()]

    def read_log():
        return [json.loads(line)["iteration"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]

    assert read_log() == [1, 2] and torch.load(run_dir / "checkpoint.pt", weights_only=False)["iteration"] == 1
    monkeypatch.setattr(ppo, "ppo_losses", real)
    m = adapters.w17_rlhf(spec, shared_runs).metrics
    assert m["runs"]["ppo"] == str(run_dir) and not (run_dir / "checkpoint.pt").exists()
    assert read_log() == [1, 2, 3] and len(m["reward_curve"]) == 3  # iteration 2's row once, not twice
    from impl.w17_rlhf.run import stages

    prompts, s, r, _, _ = stages(spec, shared_runs)  # every stage reused: only the prompts are rebuilt
    straight = ppo.run(spec, prompts, s.run_dir / "model", r.run_dir / "model", tmp_path).metrics
    assert straight["reward_curve"] == m["reward_curve"] and straight["kl_curve"] == m["kl_curve"]


# --- the gpu1 path, shrunk -------------------------------------------------------------------------------------------
@pytest.mark.gpu_smoke
def test_the_gpu1_path_fine_tunes_a_pretrained_policy_and_judges_it_with_a_pretrained_judge(tmp_path, judge_dir):
    """gpu1's protocol (a pretrained policy fine-tuned by SFT, its own tokenizer, the judge from the hub) with both
    models replaced by tiny local directories and every size shrunk."""
    policy = tiny_llama_dir(tmp_path / "policy", hidden=32)
    spec = override(override(GPU1, judge={"model": judge_dir}, **SHRUNK), policy={"model": policy, "scratch": None},
                    sft={"steps": 10}, pairs={"prompts": 24}, grpo={"steps": 2, "batch_size": 8, "num_generations": 4},
                    data={"corpus": ["austen"]})  # one corpus: the same code path, half the sentences to tokenise
    m = adapters.w17_rlhf(spec, Runs("w17", "test", root=tmp_path / "artifacts")).metrics
    assert 0 <= m["win_rate"] <= 1 and m["wins"] + m["losses"] + m["ties"] == 16
    assert m["policy"] == policy and len(m["kl_curve"]) == 2 and m["heldout_pairs"] > 0
    g = m["grpo"]  # the comparison row: TRL's GRPOTrainer on the same reward model, judged the same way
    assert len(g["reward_curve"]) == 2 and g["wins"] + g["losses"] + g["ties"] == 16
