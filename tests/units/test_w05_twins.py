"""w05's unit tests are sharp: for each unit a plausible wrong implementation fails its snapshot (the twins). And
the units are DeepSpeed's ZeRO and the ZeRO paper: zero_partition is what DeepSpeed 0.19.8's ZeRO-2 optimizer
holds on each rank (its fp32 partitions, read from a real DeepSpeedZeroOptimizer), and zero_memory_per_rank gives
the paper's figure-1 numbers and DeepSpeed's own memory estimate."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from impl import units
from impl.units import check

REF = units.catalogue("w05")  # the reference units: the bindings below are about them, whatever --impl selects
ROOT = Path(__file__).resolve().parents[2]


# --- the twins -------------------------------------------------------------------------------------------------
def partition_without_padding(flat, rank, world_size, alignment=2):
    """n // N elements each: the tail n mod N elements belong to nobody."""
    size = flat.numel() // world_size
    return flat[rank * size:(rank + 1) * size]


def partition_padded_to_a_multiple_of_the_ranks_only(flat, rank, world_size, alignment=2):
    """Ignores DeepSpeed's alignment: 10 elements over 4 ranks become 3 each, not 4."""
    return F.pad(flat, (0, -flat.numel() % world_size)).chunk(world_size)[rank]


def gather_in_the_wrong_rank_order(partitions, numel):
    return torch.cat(partitions[::-1])[:numel]


def gather_keeping_the_padding(partitions, numel):
    return torch.cat(partitions)


def memory_sharding_the_gradients_at_stage_1(num_params, world_size, stage, k=12):
    return REF["zero_memory_per_rank"](num_params, world_size, 2 if stage == 1 else stage, k)


def memory_without_the_16bit_gradients(num_params, world_size, stage, k=12):
    full = REF["zero_memory_per_rank"](num_params, world_size, stage, k)
    return full - 2 * num_params / (world_size if stage >= 2 else 1)


TWINS = [
    ("zero_partition", partition_without_padding),
    ("zero_partition", partition_padded_to_a_multiple_of_the_ranks_only),
    ("zero_gather", gather_in_the_wrong_rank_order),
    ("zero_gather", gather_keeping_the_padding),
    ("zero_memory_per_rank", memory_sharding_the_gradients_at_stage_1),
    ("zero_memory_per_rank", memory_without_the_16bit_gradients),
]


def test_every_unit_has_a_twin():
    assert {name for name, _ in TWINS} == set(units.catalogue("w05"))


@pytest.mark.parametrize("name,twin", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_a_plausible_wrong_unit_fails_its_snapshot(name, twin):
    status, why = check.check("w05", name, twin)
    assert status != "pass", f"{twin.__name__} passed the {name} snapshot"


# --- zero_partition and zero_gather against DeepSpeed ------------------------------------------------------------
@pytest.mark.parametrize("numel,world", [(37, 4), (10, 4), (37, 3), (24, 4), (1, 8), (18, 2)])
def test_the_partition_is_deepspeeds_padding_and_split(numel, world, monkeypatch):
    """DeepSpeed's own two steps on the same flat tensor: align_dense_tensors pads the group to a multiple of
    nccl_start_alignment_factor (2) x world size, get_data_parallel_partitions cuts it into world equal views
    (its data-parallel world size stubbed: the method asks deepspeed.comm for nothing else). Exactly equal."""
    from types import SimpleNamespace

    from deepspeed.runtime.utils import align_dense_tensors
    from deepspeed.runtime.zero import stage_1_and_2

    monkeypatch.setattr(stage_1_and_2, "dist", SimpleNamespace(get_world_size=lambda group=None: world))
    flat = torch.randn(numel, generator=torch.Generator().manual_seed(numel)) + 3.0
    padded = torch.cat(align_dense_tensors([flat], 2 * world))
    theirs = stage_1_and_2.DeepSpeedZeroOptimizer.get_data_parallel_partitions(
        SimpleNamespace(real_dp_process_group=[None]), padded, 0)
    mine = [REF["zero_partition"](flat, r, world) for r in range(world)]
    assert len(theirs) == world
    for r in range(world):
        assert torch.equal(mine[r], theirs[r]), r
    assert torch.equal(REF["zero_gather"](mine, numel), flat)  # and back


_RANK = """
import json, os, sys
import torch, torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
rank, world, stage, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                  MASTER_PORT="29500")
dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
import deepspeed
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.GELU(), torch.nn.Linear(3, 1))
# w05's two groups (impl/w01_gpt/train.make_optimizer): matrices with weight decay, the biases without
groups = [{"params": [model[0].weight, model[2].weight]}, {"params": [model[0].bias, model[2].bias],
                                                           "weight_decay": 0.0}]
flats = [torch.cat([p.detach().flatten() for p in g["params"]]).clone() for g in groups]
config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": stage},
          "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9}
_, opt, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(groups), config=config)
held = [t.detach().tolist() for t in opt.single_partition_of_fp32_groups]
json.dump({"kind": type(opt).__name__, "flats": [f.tolist() for f in flats], "held": held}, open(out, "w"))
"""


def test_the_partition_is_what_a_deepspeed_zero_optimizer_holds(tmp_path):
    """A real DeepSpeedZeroOptimizer built by deepspeed.initialize (ZeRO-2, as w05 trains), as rank 1 of 2 in a
    process of its own on torch's fake process group (its collectives do nothing: every rank starts from the same
    seeded weights, so nothing needs sending), over w05's two parameter groups (impl/w01_gpt/train.make_optimizer:
    matrices, then biases), here of 18 and 4 elements. The fp32 master partitions it holds are zero_partition's,
    exactly: 18 is padded to 20 (rank 1 holds 10, the last two padding; not 9), 4 is split 2 / 2. (Rank 1 only:
    DeepSpeed keeps its process groups for the life of a process, and each process costs seconds of imports; the
    other ranks and layouts are in test_the_partition_is_deepspeeds_padding_and_split.)"""
    rank, world, stage = 1, 2, 2
    out = tmp_path / "held.json"
    p = subprocess.run([sys.executable, "-c", _RANK, str(rank), str(world), str(stage), str(out)], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:]
    got = json.loads(out.read_text())
    assert got["kind"] == "DeepSpeedZeroOptimizer"
    flats = [torch.tensor(f) for f in got["flats"]]
    held = [torch.tensor(h) for h in got["held"]]
    assert [f.numel() for f in flats] == [18, 4] and [h.numel() for h in held] == [10, 2]
    for flat, h in zip(flats, held):
        assert torch.equal(REF["zero_partition"](flat, rank, world), h)
    assert torch.equal(held[0][-2:], torch.zeros(2))


# --- zero_memory_per_rank against the paper and DeepSpeed's estimate ---------------------------------------------
def test_the_memory_formula_gives_the_zero_papers_figure_1():
    """Ψ = 7.5B parameters, N = 64 GPUs, K = 12: 120 GB, 31.4 GB, 16.6 GB and 1.9 GB per GPU (GB = 1e9 bytes, the
    paper's rounding)."""
    got = [REF["zero_memory_per_rank"](7.5e9, 64, stage) / 1e9 for stage in range(4)]
    assert [round(g, 1) for g in got] == [120.0, 31.4, 16.6, 1.9]
    assert got[3] == pytest.approx(1.875)
    with pytest.raises(ValueError):
        REF["zero_memory_per_rank"](7.5e9, 64, 4)


@pytest.mark.parametrize("psi,gpus", [(7_500_000_000, 64), (125_000_000, 2), (1_000_003, 7)])
def test_stage_2_is_deepspeeds_own_estimate_with_its_k(psi, gpus):
    """DeepSpeed's estimate_zero2_model_states_mem_needs (no offload) counts per parameter 2 bytes of 16-bit
    parameters, replicated, and 18 partitioned: 2 of 16-bit gradients and K = 16 of fp32 gradients, fp32 master
    parameters and Adam's two moments (the paper's K = 12 without the fp32 gradients). It truncates to whole
    bytes: within 1 byte."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, gpu_bytes = estimate_zero2_model_states_mem_needs(psi, num_gpus_per_node=gpus, cpu_offload=False)
    assert abs(REF["zero_memory_per_rank"](psi, gpus, 2, k=16) - gpu_bytes) < 1

