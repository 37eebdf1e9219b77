"""What the tensor- and pipeline-parallel runs share: the reference model and batches, the optimizer, timing
and peak memory, collecting numbers across ranks, fault injection and the torchrun entry point.

Every rank builds the single-process reference itself (same seed, same weights) and compares its own part of
the parallel model against the matching part of the reference, so no weights or gradients are shipped around;
one all-reduce (MAX) of the differences gives the largest one over all ranks.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from impl.core.artifacts import write_json
from impl.core.distributed import init_from_env, leave, peak_memory_mb, per_rank, reset_peak_memory, shutdown
from impl.w01_gpt.model import GPT, GPTConfig
from impl.w13_parallel.spec import W13Spec


def reference_model(spec: W13Spec, device: torch.device) -> GPT:
    """The single-process model; the seed makes it identical on every rank."""
    m = spec.model
    torch.manual_seed(spec.parity.seed)
    return GPT(GPTConfig(vocab_size=m.vocab_size, context=m.context, n_layer=m.n_layer, n_head=m.n_head,
                         n_embd=m.n_embd, dropout=0.0)).to(device)


def batch(spec: W13Spec, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids, a function of (seed, step) only, so every rank and layout sees the same batch."""
    p = spec.parity
    g = torch.Generator().manual_seed(p.seed * 1_000_003 + step)
    seq = torch.randint(0, spec.model.vocab_size, (p.batch_size, p.seq_len + 1), generator=g)
    return seq[:, :-1].to(device), seq[:, 1:].to(device)


def make_optimizer(model: torch.nn.Module, spec: W13Spec) -> torch.optim.Optimizer:
    # Elementwise optimizers only (and no gradient clipping): a shard's update then equals the same slice of
    # the full update. A global-norm clip would need one more all-reduce of the squared norms.
    p = spec.parity
    params = list(model.parameters())
    if p.optimizer == "sgd":
        return torch.optim.SGD(params, lr=p.lr)
    decay = [q for q in params if q.dim() >= 2]
    no_decay = [q for q in params if q.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=p.lr, betas=(0.9, 0.95))


def train_step(model: GPT, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    return loss.item()


def state_mb(model: torch.nn.Module, spec: W13Spec) -> float:
    """Parameters + gradients (+ Adam's two moments) this process holds, in MiB: what parallelism divides."""
    copies = 4 if spec.parity.optimizer == "adamw" else 2
    return copies * sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step_fn: Callable[[torch.Tensor, torch.Tensor], object], spec: W13Spec,
               device: torch.device) -> dict:
    """One warm-up step (optimizer state, kernel choice), then `timed_steps` timed ones on fresh batches."""
    p = spec.parity
    batches = [batch(spec, p.steps + i, device) for i in range(p.timed_steps + 1)]  # made outside the clock
    reset_peak_memory(device)
    step_fn(*batches[0])
    sync(device)
    if dist.is_initialized():
        dist.barrier()  # start the clock together
    t0 = time.perf_counter()
    for x, y in batches[1:]:
        step_fn(x, y)
    sync(device)
    seconds = (time.perf_counter() - t0) / p.timed_steps
    return {"seconds_per_step": seconds, "tokens_per_s": p.batch_size * p.seq_len / seconds,
            "peak_memory_mb": peak_memory_mb(device)}


def max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # gloo and NCCL both have MAX (gloo has no AVG)
    return t.tolist()


def from_rank(values: list[float], src: int, device: torch.device) -> list[float]:
    """The `values` of rank `src` on every rank (the others pass placeholders of the same length)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=src)
    return t.tolist()


def inject_fault(kind: str | None, rank: int, world: int) -> None:
    """For the harness's own tests: the last rank fails or hangs while the others wait for it."""
    if kind is None or world < 2 or rank != world - 1:
        return
    if kind == "raise":
        raise RuntimeError(f"injected failure on rank {rank}")
    print(f"rank {rank}: hanging (injected)", flush=True)  # flush: the group is killed, buffers are lost
    time.sleep(24 * 3600)


def single_process_baseline(spec: W13Spec, device: torch.device) -> dict:
    """The reference model alone, timed the same way: the denominator of speedup and efficiency."""
    model = reference_model(spec, device)
    opt = make_optimizer(model, spec)
    timing = time_steps(lambda x, y: train_step(model, opt, x, y), spec, device)
    return {"kind": "single", "nproc": 1, "device": device.type, "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in model.parameters()), "param_state_mb": state_mb(model, spec),
            **timing}


def entry(process: Callable[..., None]) -> None:
    """torchrun entry point shared by tp.py and pp.py: `--spec-json S --out O [--sabotage] [--inject-fault K]`."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec-json", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sabotage", action="store_true")
    ap.add_argument("--inject-fault", choices=["raise", "hang"])
    a = ap.parse_args()
    spec = W13Spec.model_validate_json(a.spec_json.read_text())
    rank, world, device = init_from_env()
    inject_fault(a.inject_fault, rank, world)
    if world == 1:
        result = single_process_baseline(spec, device)
    else:
        result = process(spec, rank, world, device, a.sabotage)
    if rank == 0:
        write_json(a.out, result)
    if world > 1:
        dist.barrier()  # nobody tears the group down while rank 0 still writes
    shutdown()
    leave()
