"""w01 training runs at toy scale: sabotage twins, resume after a kill, DDP parity and its twin, bad checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from impl import adapters
from impl.core.artifacts import CheckpointError, Runs
from impl.core.profiles import load_profile, override

from .conftest import TINY


def test_learning_rate_zero_fails_the_cpu_target(tmp_runs):
    """Sabotage twin of the cpu val_ppl check: the same spec and protocol (whole validation split), lr 0.
    With lr 0 the weights never move, so two steps stand for the full budget."""
    cpu = load_profile("cpu").milestone("w01")
    broken = override(cpu, train={"lr": 0.0, "min_lr": 0.0, "steps": 2})
    result = adapters.w01_train(broken, tmp_runs)
    assert result.metrics["val_tokens_scored"] > 100_000
    assert not cpu.targets["val_ppl"].passes(result.metrics["val_ppl"])
    assert result.metrics["val_ppl"] > 3000  # ~uniform over the 4,096-token vocabulary


def test_a_few_steps_beat_the_untrained_model(tiny_spec, tmp_runs):
    trained = adapters.w01_train(tiny_spec, tmp_runs).metrics
    frozen = adapters.w01_train(override(tiny_spec, train={"lr": 0.0, "min_lr": 0.0}), tmp_runs).metrics
    assert trained["val_ppl"] < 0.8 * frozen["val_ppl"]
    assert trained["val_bpb"] < frozen["val_bpb"]


def _train_cli(profile: Path, artifacts: Path) -> subprocess.Popen:
    env = {**os.environ, "LLM_MILESTONES_ARTIFACTS": str(artifacts)}
    return subprocess.Popen([sys.executable, "-m", "impl", "train", "w01", "--profile", str(profile)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_resumes_from_its_checkpoint_and_reaches_the_same_model(tmp_path):
    profile = tmp_path / "slowish.yaml"
    # enough steps that the kill lands between checkpoints
    profile.write_text(TINY.read_text().replace("steps: 12,", "steps: 300,").replace("checkpoint_every: 4", "checkpoint_every: 50"))
    straight = _train_cli(profile, tmp_path / "a")
    assert straight.wait(timeout=600) == 0, straight.stdout.read()

    killed = _train_cli(profile, tmp_path / "b")
    deadline = time.time() + 600
    while not list((tmp_path / "b").glob("w01/tiny/*/checkpoint.pt")):
        assert killed.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (run,) = (tmp_path / "b").glob("w01/tiny/*")
    assert not (run / "metrics.json").exists()
    resumed = _train_cli(profile, tmp_path / "b")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()

    (ref,) = (tmp_path / "a").glob("w01/tiny/*")
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from the uninterrupted run"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (ref, run))
    assert ma["val_loss"] == mb["val_loss"]
    steps = [json.loads(l)["step"] for l in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "the training log repeats or loses steps after the resume"


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_checkpoint_gives_a_clear_error_and_is_kept(tiny_spec, tmp_runs, damage):
    run_dir = tmp_runs.dir_for(tiny_spec.model_dump(exclude={"targets", "ddp_parity"}))
    ckpt = run_dir / "checkpoint.pt"
    if damage == "truncated":
        import torch

        torch.save({"model": {"w": torch.zeros(1000)}, "optimizer": {}, "step": 4, "rng": torch.get_rng_state()}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    else:
        ckpt.write_bytes(b"not a checkpoint")
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match="unreadable.*left as it is"):
        adapters.w01_train(tiny_spec, tmp_runs)
    assert ckpt.read_bytes() == before, "the damaged checkpoint must be left for the user"


def test_a_corrupt_final_model_gives_a_clear_error(tiny_spec, tmp_runs):
    from impl.w01_gpt.train import load_trained

    result = adapters.w01_train(tiny_spec, tmp_runs)
    weights = result.run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors cannot be loaded"):
        load_trained(result.run_dir)


def test_reuse_takes_a_complete_run_and_otherwise_trains_again(tiny_spec, tmp_path):
    first = adapters.w01_train(tiny_spec, Runs("w01", "t", root=tmp_path)).run_dir
    again = adapters.w01_train(tiny_spec, Runs("w01", "t", root=tmp_path))
    reused = adapters.w01_train(tiny_spec, Runs("w01", "t", reuse=True, root=tmp_path))
    assert again.run_dir != first and not again.reused
    assert reused.reused and reused.run_dir in (first, again.run_dir)
    other = adapters.w01_train(override(tiny_spec, train={"seed": 1}), Runs("w01", "t", reuse=True, root=tmp_path))
    assert not other.reused, "a run with another config must not be reused"


def test_a_twins_shared_runs_reuse_what_this_process_trained_never_a_run_it_finds_on_disk(tiny_spec, tmp_path):
    """How a sabotage twin reuses the stages its acceptance check trained moments before on the same worker:
    `share` finds a complete run of the same config this process made under another root or profile; a complete
    run of an earlier session on disk (older code, perhaps) is not one."""
    from impl.core import artifacts

    made = adapters.w01_train(tiny_spec, Runs("w01", "cpu", root=tmp_path / "check"))
    shared = adapters.w01_train(tiny_spec, Runs("w01", "test", share=True, root=tmp_path / "twin"))
    assert shared.reused and shared.run_dir == made.run_dir
    other = override(tiny_spec, train={"seed": 7})  # a config no other test of this process trains
    old = adapters.w01_train(other, Runs("w01", "cpu", root=tmp_path / "check")).run_dir
    artifacts._MADE_HERE[("w01", old.name.rsplit("-", 1)[0])].remove(old)  # as if an earlier process had made it
    again = adapters.w01_train(other, Runs("w01", "test", share=True, root=tmp_path / "twin"))
    assert not again.reused and again.run_dir.is_relative_to(tmp_path / "twin")


def test_ddp_on_two_gloo_processes_matches_one_process(tiny_spec, tmp_runs):
    r = adapters.w01_ddp_parity(tiny_spec, tmp_runs)
    assert tiny_spec.targets["ddp_max_param_diff"].passes(r["ddp_max_param_diff"])
    assert r["max_loss_diff"] < 1e-5 and r["backend"] == "gloo"


def test_ddp_without_the_gradient_all_reduce_fails_the_cpu_parity_target(tmp_runs):
    """Sabotage twin of the DDP parity check, on the cpu profile's own spec (4 steps of its model and batch) and
    target: each rank steps on its own half of the batch (measured 1.4e-2 against the target 1e-4)."""
    cpu = load_profile("cpu").milestone("w01")
    r = adapters.w01_ddp_parity(cpu, tmp_runs, skip_allreduce=True)
    assert not cpu.targets["ddp_max_param_diff"].passes(r["ddp_max_param_diff"])
    assert r["ddp_max_param_diff"] > 10 * cpu.targets["ddp_max_param_diff"].threshold


def test_batch_not_divisible_by_processes_is_refused(tiny_spec, tmp_runs):
    bad = override(tiny_spec, train={"batch_size": 9, "grad_accum": 2})
    with pytest.raises(ValueError, match="multiple of processes x grad_accum"):
        adapters.w01_train(bad, tmp_runs)


def test_two_processes_building_the_same_token_cache_at_once_both_succeed(tmp_path, tiny_spec):
    """pytest-xdist workers (or a user's two shells) may prepare the same cold cache concurrently."""
    from impl.core.fixtures import fixture_path

    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("austen", "brown"):
        (cache / name).symlink_to(fixture_path(name))
    code = ("import sys; from impl.core.profiles import load_profile; from impl.w01_gpt.data import prepare; "
            f"s = load_profile({str(TINY)!r}).milestone('w01'); d = prepare(s.data, s.tokenizer); "
            "print(len(d.train), len(d.val))")
    env = {**os.environ, "LLM_MILESTONES_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0].split()[-2:] == outs[1].split()[-2:]
    assert not list((cache / "tokenized").glob("*.tmp"))


def test_a_token_cache_that_cannot_be_moved_into_place_is_a_clear_error(tmp_path, tiny_spec, monkeypatch):
    """Only "another process moved its identical copy there first" is taken as success; any other failure of the
    final rename (permissions, a full disk) says what happened instead of passing as a race."""
    import errno

    from impl.core.corpora import DataError
    from impl.core.fixtures import fixture_path
    from impl.w01_gpt.data import prepare

    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("austen", "brown"):
        (cache / name).symlink_to(fixture_path(name))
    monkeypatch.setenv("LLM_MILESTONES_CACHE", str(cache))
    rename = Path.rename

    def refuse(self, target):
        if self.name.endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", refuse)
    with pytest.raises(DataError, match="cannot move the token cache .*Permission denied"):
        prepare(tiny_spec.data, tiny_spec.tokenizer)


def test_the_unigram_baseline_is_scored_on_the_same_tokens_as_the_model(tiny_spec, tmp_runs):
    """tiny's eval.max_tokens is 4,000 (gpu1/gpu2 w05: 1,000,000): the baseline scores those tokens, not the split."""
    from impl.w01_gpt.data import prepare, unigram_ppl

    m = adapters.w01_train(tiny_spec, tmp_runs).metrics
    data = prepare(tiny_spec.data, tiny_spec.tokenizer)
    assert m["val_tokens_scored"] == tiny_spec.eval.max_tokens < len(data.val) - 1
    assert m["unigram_val_ppl"] == unigram_ppl(data.train, data.val[:tiny_spec.eval.max_tokens + 1], data.vocab_size)
    assert m["unigram_val_ppl"] != unigram_ppl(data.train, data.val, data.vocab_size)
