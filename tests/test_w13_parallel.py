"""w13 at toy scale (2 layers, 32 wide, 4 heads, vocabulary 64, context 16) on 2 gloo processes: tensor- and
pipeline-parallel parity with one process, their sabotage twins, a failing and a hung rank, the spec's checks,
the TP sharding and the analysis report."""
import pytest
import torch
from pydantic import ValidationError

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.distributed import DistributedError
from impl.core.profiles import load_profile
from impl.w13_parallel.spec import W13Spec

CPU = load_profile("cpu").milestone("w13")  # the twins run its spec and judge by its targets, unshrunk (~15 s each)
TINY = {"model": {"n_layer": 2, "n_head": 4, "n_embd": 32, "context": 16, "vocab_size": 64},
        "parity": {"steps": 3, "batch_size": 8, "seq_len": 16, "lr": 1.0e-3, "seed": 0, "nproc": 2,
                   "micro_batches": 4, "timed_steps": 3},
        "targets": {name: {**t.model_dump(), "protocol": "toy: 8 x 16 random tokens, 2 gloo processes"}
                    for name, t in CPU.targets.items()}}


@pytest.fixture(scope="module")
def spec():
    return W13Spec.model_validate(TINY)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # reuse: the 1-process baseline is the same for every run here, so it is measured once
    return Runs("w13", "test", reuse=True, root=tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def tp_result(spec, runs):
    return adapters.w13_parallel(spec, runs, "tp", timeout_s=600)


@pytest.fixture(scope="module")
def pp_result(spec, runs):
    return adapters.w13_parallel(spec, runs, "pp", timeout_s=600)


def test_tensor_parallel_matches_one_process(spec, tp_result):
    r = tp_result
    assert r["backend"] == "gloo" and r["nproc"] == 2 and not r["sabotage"]
    assert spec.targets["tp_max_grad_diff"].passes(r["max_grad_diff"])
    assert r["max_logit_diff"] < 1e-5 and r["loss_diff"] < 1e-5
    assert r["max_param_diff"] < 1e-4 and r["max_loss_diff"] < 1e-5
    c = r["comm"]  # what the layers all-reduced is what the formula says: 4 per layer of 8 x 16 x 32 floats
    assert c["all_reduces_per_step"] == 4 * 2
    assert c["bytes_per_step"] == 8 * 4 * 8 * 16 * 32
    assert c["all_reduces_per_step_counted"] == c["all_reduces_per_step"]
    assert c["bytes_per_step_counted"] == c["bytes_per_step"]
    assert r["tokens_per_s"] > 0 and r["tokens_per_s_single"] > 0 and r["scaling_efficiency"] > 0
    assert len(r["peak_memory_mb_per_rank"]) == 2
    assert max(r["param_state_mb_per_rank"]) < r["single"]["param_state_mb"]  # the blocks are sharded


def test_pipeline_parallel_matches_one_process(spec, pp_result):
    r = pp_result
    assert r["backend"] == "gloo" and r["nproc"] == 2 and r["stage_blocks"] == [[0], [1]]
    assert spec.targets["pp_max_grad_diff"].passes(r["max_grad_diff"])
    assert r["max_logit_diff"] < 1e-5 and r["loss_diff"] < 1e-5
    assert r["max_param_diff"] < 1e-4 and r["max_loss_diff"] < 1e-5
    assert r["bubble"]["theory"] == pytest.approx(1 / 5)  # (p - 1) / (m + p - 1), p = 2, m = 4
    assert all(0 <= b <= 1 for b in r["bubble"]["measured_per_rank"])
    assert r["comm"]["p2p_bytes_per_step"] == 2 * 8 * 16 * 32 * 4
    assert r["tokens_per_s"] > 0 and r["scaling_efficiency"] > 0


def test_tensor_parallel_without_the_row_parallel_all_reduce_fails_the_cpu_parity_target(runs):
    """Sabotage twin, on the cpu profile's own spec and target: each rank keeps its partial sums after the
    attention and MLP output projections (measured 0.11 against the target 1e-6)."""
    r = adapters.w13_parallel(CPU, runs, "tp", sabotage=True, timeout_s=600)
    assert r["sabotage"]
    assert not CPU.targets["tp_max_grad_diff"].passes(r["max_grad_diff"])
    assert r["max_grad_diff"] > 1000 * CPU.targets["tp_max_grad_diff"].threshold
    assert r["comm"]["bytes_per_step_counted"] == r["comm"]["bytes_per_step"] / 2  # only the backward ones left


def test_pipeline_without_the_tied_embedding_gradient_sum_fails_the_cpu_parity_target(runs):
    """Sabotage twin, on the cpu profile's own spec and target: the embedding copy on stage 0 misses the LM head's
    part of the tied gradient (measured 6.7e-3 against the target 1e-6)."""
    r = adapters.w13_parallel(CPU, runs, "pp", sabotage=True, timeout_s=600)
    assert not CPU.targets["pp_max_grad_diff"].passes(r["max_grad_diff"])
    assert r["max_grad_diff"] > 1000 * CPU.targets["pp_max_grad_diff"].threshold


def test_a_failing_rank_raises_with_the_ranks_output(spec, runs):
    with pytest.raises(DistributedError, match="exited with") as e:
        adapters.w13_parallel(spec, runs, "tp", inject_fault="raise", timeout_s=600)
    assert "injected failure on rank 1" in str(e.value)


def test_a_hung_rank_is_killed_at_the_time_out(spec, runs):
    """torchrun starts each rank in a session of its own: the hung rank must be gone too, not only torchrun."""
    from pathlib import Path

    with pytest.raises(DistributedError, match="timed out after 20 s"):
        adapters.w13_parallel(spec, runs, "pp", inject_fault="hang", timeout_s=20)

    def cmdline(p):
        try:
            return p.read_bytes()
        except OSError:
            return b""

    ours = str(runs.root).encode()  # this session's runs only: another suite may be running on the machine
    left = [p.parent.name for p in Path("/proc").glob("[0-9]*/cmdline")
            if b"--inject-fault\x00hang" in cmdline(p) and ours in cmdline(p)]
    assert not left, f"ranks left running: {left}"


@pytest.mark.parametrize("change, message", [
    ({"model": {"n_head": 3, "n_embd": 30}}, "n_head=3 must be divisible by parity.nproc=2"),
    ({"parity": {"micro_batches": 3}}, "batch_size=8 must be a multiple of parity.micro_batches=3"),
    ({"parity": {"micro_batches": 1, "batch_size": 8}}, "micro_batches=1 must be >= parity.nproc=2"),
    ({"parity": {"seq_len": 32}}, "seq_len=32 exceeds model.context=16"),
    ({"parity": {"nproc": 1}}, "at least 2 processes"),
])
def test_the_spec_refuses_layouts_that_do_not_fit(change, message):
    d = {k: dict(v) for k, v in TINY.items()}
    for section, fields in change.items():
        d[section].update(fields)
    with pytest.raises(ValidationError, match=message):
        W13Spec.model_validate(d)


def test_the_spec_refuses_unknown_keys():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        W13Spec.model_validate({**TINY, "parity": {**TINY["parity"], "micro_batch": 4}})


def test_the_shards_of_all_ranks_reassemble_the_reference_tensors():
    from impl.w13_parallel.tp import shard

    C, world = 8, 2
    qkv = torch.arange(3 * C * C, dtype=torch.float32).reshape(3 * C, C)
    parts = [shard("blocks.0.attn.qkv.weight", qkv, r, world) for r in range(world)]
    assert all(p.shape == (3 * C // world, C) for p in parts)
    # rank r holds [q_r; k_r; v_r]: put each of q, k, v back together
    back = torch.cat([p.reshape(3, C // world, C) for p in parts], dim=1).reshape(3 * C, C)
    assert torch.equal(back, qkv)
    assert torch.equal(shard("blocks.0.attn.qkv.bias", qkv[:, 0], 1, world), torch.cat(
        [qkv[C // 2:C, 0], qkv[C + C // 2:2 * C, 0], qkv[2 * C + C // 2:, 0]]))
    fc, proj = torch.randn(4 * C, C), torch.randn(C, 4 * C)
    assert torch.equal(torch.cat([shard("blocks.1.mlp.fc.weight", fc, r, world) for r in range(world)], 0), fc)
    assert torch.equal(torch.cat([shard("blocks.1.mlp.proj.weight", proj, r, world) for r in range(world)], 1), proj)
    for replicated in ("wte.weight", "blocks.0.ln_1.weight", "blocks.0.attn.proj.bias", "blocks.1.mlp.proj.bias"):
        assert shard(replicated, fc, 1, world) is fc


def _fake(kind: str) -> dict:
    common = {"kind": kind, "nproc": 2, "device": "cpu", "backend": "gloo", "sabotage": False, "sabotage_means": None,
              "max_logit_diff": 1e-7, "loss_diff": 1e-8, "max_grad_diff": 2e-8, "max_grad_rel_diff": 1e-6,
              "max_param_diff": 3e-7, "max_loss_diff": 1e-7, "steps": 3, "threads_per_rank": 1,
              "tokens_per_s": 3000.0, "seconds_per_step": 0.05, "peak_memory_mb_per_rank": [300.0, 310.0],
              "param_state_mb_per_rank": [0.6, 0.5], "speedup": 0.8, "scaling_efficiency": 0.4,
              "single": {"tokens_per_s": 4000.0, "threads": 2, "peak_memory_mb": 320.0, "param_state_mb": 1.0}}
    if kind == "tp":
        return {**common, "comm": {"all_reduces_per_step": 8, "bytes_per_step": 2 ** 20,
                                   "ring_bytes_sent_per_rank_per_step": 2 ** 20, "bytes_per_step_counted": 2 ** 20}}
    return {**common, "schedule": "gpipe", "micro_batches": 4, "stage_blocks": [[0], [1]],
            "comm": {"p2p_bytes_per_step": 2 ** 19, "tied_embedding_allreduce_bytes_per_step": 2 ** 19},
            "bubble": {"theory": 0.2, "measured_per_rank": [0.3, 0.4], "microbatch_seconds_per_rank": [0.01, 0.02],
                       "pipeline_seconds_per_step": 0.1}}


def test_the_analysis_is_computed_from_the_numbers():
    md = adapters.w13_analysis(_fake("tp"), _fake("pp"))
    assert md.startswith("# w13")
    assert "| 0.80 | 0.40 |" in md  # speedup and efficiency of the fake runs
    assert "| theory (p - 1) / (m + p - 1) | 0.200 |" in md
    assert "(mean 0.350)" in md and "+0.150 from theory" in md
    assert "1 MiB of payload" in md and "1 MiB per step" in md  # TP payload; PP 0.5 + 0.5 MiB
    assert "TP moves 1.0x the bytes of PP" in md
    assert "largest rank holds 60%" in md
    assert adapters.w13_analysis(_fake("tp"), None).count("Pipeline bubble") == 0


@pytest.mark.gpu_smoke
def test_gpu2_profile_path_runs_here_shrunk(runs):
    """The gpu2 spec (its schedule, micro-batches, steps) with the model and batch shrunk, on 2 gloo processes."""
    from impl.core.profiles import load_profile, override

    gpu2 = load_profile("gpu2").milestone("w13")
    spec = override(gpu2, model=TINY["model"], parity={"batch_size": 8, "seq_len": 16, "timed_steps": 2})
    assert spec.parity.schedule == gpu2.parity.schedule and spec.parity.micro_batches == gpu2.parity.micro_batches
    for kind in ("tp", "pp"):
        r = adapters.w13_parallel(spec, runs, kind, timeout_s=600)
        assert r["nproc"] == 2 and spec.targets[f"{kind}_max_grad_diff"].passes(r["max_grad_diff"])
