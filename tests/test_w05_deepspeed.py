"""w05's sabotage twins, its gpu code paths shrunk onto this CPU, and its bad input.

The twins use the cpu profile's own targets: a ZeRO run with learning rate 0 misses the perplexity target; a
ZeRO-2 run whose ranks all train on the same shard misses the loss-curve match; ZeRO-0 (no partitioning) misses
the optimizer-state target. The gpu1 and gpu2 specs run here with the model shrunk, bf16 included, on a local
directory in OpenWebText's hub format."""
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.corpora import DataError, hub_document_splits
from impl.core.distributed import DistributedError
from impl.core.fixtures import read_documents
from impl.core.profiles import load_profile, override
from impl.w05_deepspeed.spec import W05Spec
from impl.w05_deepspeed.train import CONFIGS, deepspeed_config

CPU = load_profile("cpu").milestone("w05")
TINY_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "context": 32}


@pytest.fixture
def runs(tmp_path):
    return Runs("w05", "test", root=tmp_path / "artifacts")


@pytest.fixture(scope="module")
def openwebtext_like_dir(tmp_path_factory):
    """What streaming Skylion007/openwebtext yields (one `train` split, a `text` column, one document a row), in
    miniature, filled with real offline text: 40 Austen chapters."""
    out = tmp_path_factory.mktemp("openwebtext")
    docs = [d["text"] for d in read_documents("austen")[:40]]
    pq.write_table(pa.table({"text": docs}), out / "train-00000-of-00001.parquet")
    return out


# --- sabotage twins --------------------------------------------------------------------------------------------
def test_learning_rate_zero_fails_the_cpu_perplexity_target(runs):
    """The untrained model is what any number of steps at lr 0 leaves, so two steps stand for the whole run."""
    spec = override(CPU, train={"lr": 0.0, "min_lr": 0.0, "steps": 2})
    m = adapters.w05_train(spec, runs).metrics
    assert m["zero_stage"] == 2 and m["world_size"] == 2 and m["backend"] == "gloo"
    assert not CPU.targets["val_ppl"].passes(m["val_ppl"])
    assert m["val_ppl"] > m["unigram_val_ppl"]  # worse than even the trivial baseline
    assert m["cost_usd"] is None  # the cpu profile names no price


def test_ranks_sharing_one_shard_fail_the_loss_match_target(runs):
    """The cpu comparison spec (its steps and batch), stages 0 and 2 only: measured 3.2e-2 against 1e-5."""
    spec = override(CPU, compare={"stages": [0, 2]})
    c = adapters.w05_compare(spec, runs, same_shard=True)
    assert not CPU.targets["zero2_ddp_max_loss_diff"].passes(c["zero2_ddp_max_loss_diff"])
    # ZeRO-0 runs the same DDP algorithm through DeepSpeed: it matches DDP
    zero0, ddp = c["runs"]["zero0"], c["runs"]["ddp"]
    assert max(abs(a - b) for (_, a), (_, b) in zip(zero0["curve"], ddp["curve"])) < 1e-4
    assert CPU.targets["optimizer_state_ratio"].passes(c["optimizer_state_ratio"])  # ZeRO-2's state is still half
    # what each ZeRO-2 rank holds of the fp32 master weights is the unit's partition of each parameter group
    zero2 = c["runs"]["zero2"]
    assert zero2["master_param_bytes_per_rank"] == _zero_partition_bytes(zero2["run_dir"], spec, c["nproc"])
    table = adapters.w05_stage_table(c, gpu_hour_usd=2.0)
    assert "sabotaged: ranks share one shard" in table and "| ZeRO-0 |" in table and "$2.00 / GPU-hour" in table


def _zero_partition_bytes(run_dir, spec, world: int) -> list[int]:
    """Bytes of rank r's fp32 partitions by the unit w05.zero_partition: the run's model, its parameters in w05's
    two optimizer groups (decay, no decay), each group flattened in order and partitioned as DeepSpeed does."""
    import torch

    from impl.units import w05
    from impl.w01_gpt.model import GPT, GPTConfig
    from impl.w01_gpt.train import make_optimizer

    model = GPT(GPTConfig(**json.loads((Path(run_dir) / "model_config.json").read_text())))
    flats = [torch.cat([p.detach().flatten() for p in g["params"]])
             for g in make_optimizer(model, spec, torch.optim.AdamW).param_groups]
    return [sum(4 * w05.zero_partition(f, r, world).numel() for f in flats) for r in range(world)]


def test_a_zero2_run_that_partitions_nothing_fails_the_state_target(runs):
    """The acceptance value itself (optimizer_state_ratio, ZeRO-2's bytes per rank over DDP's) from a comparison
    whose ZeRO-2 slot runs stage 0: 1.0 against the target 0.55. The cpu comparison spec, stage 2 only."""
    c = adapters.w05_compare(override(CPU, compare={"stages": [2]}), runs, unpartitioned=True)
    assert c["optimizer_state_ratio"] == pytest.approx(1.0)
    assert not CPU.targets["optimizer_state_ratio"].passes(c["optimizer_state_ratio"])


# --- the gpu code paths, shrunk ----------------------------------------------------------------------------------
def _shrunk(profile: str, local_dir) -> W05Spec:
    gpu = load_profile(profile).milestone("w05")
    return override(gpu, data={"local_dir": str(local_dir), "max_docs": 40, "val_fraction": 0.1},
                    model=TINY_MODEL,
                    train={"steps": 2, "batch_size": 4 * gpu.train.nproc, "grad_accum": 2, "warmup_steps": 1},
                    eval={"stride": 32, "max_tokens": 2048},
                    **({"compare": {"steps": 2, "stages": [2, 3]}} if gpu.compare else {}))


@pytest.mark.gpu_smoke
def test_gpu1_path_runs_here_shrunk_with_bf16_on_openwebtext_format(openwebtext_like_dir, runs):
    spec = _shrunk("gpu1", openwebtext_like_dir)
    assert spec.train.precision == "bf16" and spec.train.zero_stage == 2 and spec.tokenizer.kind == "gpt2"
    r = adapters.w05_train(spec, runs, gpu_hour_usd=2.5)
    m = r.metrics
    ds = json.loads((r.run_dir / "ds_config.json").read_text())
    assert ds["bf16"] == {"enabled": True} and ds["zero_optimization"]["stage"] == 2
    assert ds["gradient_accumulation_steps"] == 2 and ds["train_micro_batch_size_per_gpu"] == 2
    assert m["world_size"] == 1 and math.isfinite(m["val_ppl"])
    assert m["cost_usd"] == pytest.approx(m["device_hours"] * 2.5)
    assert "openwebtext" in m["data"] and "first 40 documents" in m["data"]


@pytest.mark.gpu_smoke
def test_gpu2_path_runs_here_shrunk_and_compares_with_ddp(openwebtext_like_dir, runs):
    spec = _shrunk("gpu2", openwebtext_like_dir)
    m = adapters.w05_train(spec, runs).metrics
    assert m["world_size"] == 2 and m["precision"] == "bf16" and math.isfinite(m["val_ppl"])
    c = adapters.w05_compare(spec, runs)
    assert spec.targets["zero2_ddp_max_loss_diff"].passes(c["zero2_ddp_max_loss_diff"])
    assert spec.targets["optimizer_state_ratio"].passes(c["optimizer_state_ratio"])
    zero3 = c["runs"]["zero3"]  # ZeRO-3 partitions the parameters too
    assert max(zero3["param_bytes_per_rank"]) < max(c["runs"]["ddp"]["param_bytes_per_rank"])


# --- configs, spec and bad input -------------------------------------------------------------------------------
def test_the_configs_are_filled_from_the_profile_and_its_overrides_win():
    for stage in range(4):
        assert json.loads((CONFIGS / f"zero{stage}.json").read_text())["zero_optimization"]["stage"] == stage
    spec = override(CPU, train={"zero_stage": 3, "precision": "bf16"},
                    deepspeed={"zero_optimization": {"reduce_bucket_size": 1000}, "steps_per_print": 7})
    ds = deepspeed_config(spec, world=2)
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["reduce_bucket_size"] == 1000
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 0  # the cpu profile's, kept
    assert ds["train_batch_size"] == spec.train.batch_size
    assert ds["train_micro_batch_size_per_gpu"] * 2 * ds["gradient_accumulation_steps"] == spec.train.batch_size
    assert ds["bf16"] == {"enabled": True} and ds["steps_per_print"] == 7


@pytest.mark.parametrize("change, message", [
    ({"train": {"batch_size": 33}}, "must be a multiple of train.nproc x train.grad_accum"),
    ({"compare": {"stages": [0, 1]}}, "whose stages include 2"),
    ({"compare": {"nproc": 1}}, "nothing to partition"),
    ({"train": {"zero_stage": 4}}, "zero_stage"),
    ({"deepspeed": {"zero_optimization": {"stage": 3}}}, "contradicts train.zero_stage=2"),
])
def test_the_spec_refuses_what_cannot_run(change, message):
    with pytest.raises(ValidationError, match=message):
        override(CPU, **change)


def test_a_deepspeed_error_in_the_ranks_reaches_the_test_with_their_output(runs):
    spec = override(CPU, train={"steps": 1}, deepspeed={"train_batch_size": 7})  # DeepSpeed checks its batch sums
    with pytest.raises(DistributedError, match="exited with") as e:
        adapters.w05_train(spec, runs)
    assert "train_batch_size" in str(e.value) and "Traceback" in str(e.value)


def test_a_document_dataset_is_split_by_document_and_a_missing_one_is_a_clear_error(openwebtext_like_dir, tmp_path):
    s = hub_document_splits("Skylion007/openwebtext", None, str(openwebtext_like_dir), max_docs=30, val_fraction=0.2)
    assert len(s.train) + len(s.val) == 30 and s.val and s.train
    again = hub_document_splits("Skylion007/openwebtext", None, str(openwebtext_like_dir), 30, 0.2)
    assert again.val == s.val  # the split is a function of the row number, not of chance
    with pytest.raises(DataError, match="train-\\*.parquet"):
        hub_document_splits("Skylion007/openwebtext", None, str(tmp_path), 30, 0.2)
    with pytest.raises(DataError, match="empty split"):
        hub_document_splits("Skylion007/openwebtext", None, str(openwebtext_like_dir), 1, 0.0)
