"""A p-stage pipeline of the w01 GPT with torch.distributed.pipelining, checked against the same model in one
process.

    torchrun --nproc_per_node=2 -m impl.w13_parallel.pp --spec-json spec.json --out pp.json [--sabotage]
    # what run.run(spec, runs, "pp") launches (gloo on CPU, NCCL on GPU)

Rank r holds stage r: a contiguous run of blocks, plus the embeddings on the first stage and the final LayerNorm
and LM head on the last. A schedule (GPipe, or 1F1B) splits each batch into `micro_batches` micro-batches and
streams them through the stages; activations go forward and their gradients backward by point-to-point sends.
The loss is the mean over each micro-batch, and the schedule divides the accumulated gradients by the number of
micro-batches (scale_grads=True), so they equal the full batch's mean-loss gradients.

The GPT ties its LM head to the token embedding, which now live on two ranks: each holds a copy and sees only
part of the gradient (the embedding's on the first stage, the head's on the last). Summing the two with one
all-reduce (as Megatron does for its "embedding group") keeps the copies identical; `--sabotage` leaves it out.

With p stages and m micro-batches each stage idles for (p - 1) of the m + p - 1 slots of a step: the bubble
fraction (p - 1) / (m + p - 1). Measured here per rank as 1 - m x (its micro-batch forward+backward time, run
alone) / (pipeline step time), which also counts the transfers and any imbalance between stages (the last stage
carries the LM head: with a 50k vocabulary it is by far the heaviest).
"""
from __future__ import annotations

import copy
import gc
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.elastic.multiprocessing.errors import record
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from impl.units import w13
from impl.w01_gpt.model import GPT
from impl.w13_parallel.common import (batch, entry, from_rank, make_optimizer, max_over_ranks, per_rank,
                                      reference_model, state_mb, sync, time_steps, train_step)
from impl.w13_parallel.spec import W13Spec

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class Stage(nn.Module):
    """Blocks [first, last) of a GPT, with the embeddings if it is the first stage and the head if the last.
    Blocks sit in a ModuleDict keyed by their index in the full model, so parameter names match the reference."""

    def __init__(self, full: GPT, blocks: range, is_first: bool, is_last: bool):
        super().__init__()
        self.is_first, self.is_last = is_first, is_last
        if is_first:
            self.wte, self.wpe = full.wte, full.wpe
        self.blocks = nn.ModuleDict({str(i): full.blocks[i] for i in blocks})
        if is_last:
            self.ln_f, self.lm_head = full.ln_f, full.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_first:  # token ids in, activations out
            x = self.wte(x) + self.wpe(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks.values():
            x = block(x)
        return self.lm_head(self.ln_f(x)) if self.is_last else x


def stage_blocks(n_layer: int, world: int) -> list[range]:
    bounds = [round(i * n_layer / world) for i in range(world + 1)]
    return [range(bounds[r], bounds[r + 1]) for r in range(world)]


def build_stage(ref: GPT, rank: int, world: int) -> Stage:
    full = copy.deepcopy(ref)  # the stage takes its parts; the rest is dropped with `full`
    return Stage(full, stage_blocks(ref.cfg.n_layer, world)[rank], rank == 0, rank == world - 1)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The schedule calls loss_fn(output, target) on the last stage, once per micro-batch."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def comm_per_step(spec: W13Spec, world: int, element_size: int = 4) -> dict:
    m, p = spec.model, spec.parity
    activations = p.batch_size * p.seq_len * m.n_embd * element_size  # one boundary, all micro-batches
    return {"p2p_bytes_per_step": 2 * (world - 1) * activations,  # forward activations + their gradients
            "tied_embedding_allreduce_bytes_per_step": m.vocab_size * m.n_embd * element_size}


def microbatch_seconds(stage: Stage, spec: W13Spec, device: torch.device, reps: int) -> float:
    """This stage's forward + backward of one micro-batch with no pipeline around it: its busy time per slot."""
    p = spec.parity
    mb = p.batch_size // p.micro_batches
    x, y = batch(spec, 0, device)
    x, y = x[:mb], y[:mb]
    inp = x if stage.is_first else torch.randn(mb, p.seq_len, spec.model.n_embd, device=device, requires_grad=True)

    def once():
        out = stage(inp)
        if stage.is_last:
            lm_loss(out, y).backward()
        else:
            out.backward(torch.ones_like(out))

    once()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        once()
    sync(device)
    stage.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / reps


def pp_process(spec: W13Spec, rank: int, world: int, device: torch.device, sabotage: bool) -> dict:
    p = spec.parity
    first, last = rank == 0, rank == world - 1
    ref = reference_model(spec, device)
    stage_mod = build_stage(ref, rank, world)
    stage = PipelineStage(stage_mod, rank, world, device)  # shapes are inferred from the first micro-batch
    schedule = SCHEDULES[p.schedule](stage, n_microbatches=p.micro_batches, loss_fn=lm_loss)
    tied_group = dist.new_group([0, world - 1])  # every rank must call new_group, members or not
    tied = stage_mod.wte.weight if first else stage_mod.lm_head.weight if last else None
    pipeline_seconds: list[float] = []

    def forward_backward(x, y):
        """One pipelined forward+backward of the whole batch; (logits, mean loss) on the last stage."""
        sync(device)
        t0 = time.perf_counter()
        losses: list[torch.Tensor] = []
        if first:
            out = schedule.step(x)  # the first stage feeds the inputs, split into micro-batches
        elif last:
            out = schedule.step(target=y, losses=losses)  # the last computes loss_fn per micro-batch
        else:
            out = schedule.step()
        if tied is not None and not sabotage:
            dist.all_reduce(tied.grad, group=tied_group)  # embedding part + head part of the tied gradient
        sync(device)
        pipeline_seconds.append(time.perf_counter() - t0)
        return out, (torch.stack(losses).mean() if last else None)

    def pp_train_step(x, y) -> float:
        opt.zero_grad(set_to_none=True)  # the stage accumulates into .grad over micro-batches
        _, loss = forward_backward(x, y)
        opt.step()
        return loss.item() if last else 0.0

    # 1) one forward and backward on the same batch
    ref_params = dict(ref.named_parameters(remove_duplicate=False))  # includes lm_head.weight (= wte.weight)
    x, y = batch(spec, 0, device)
    _, ref_loss = ref(x, y)
    ref_loss.backward()
    with torch.no_grad():
        ref_logits = ref(x)[0]
    logits, loss = forward_backward(x, y)
    with torch.no_grad():
        grad_diff = max((q.grad - ref_params[n].grad).abs().max().item() for n, q in stage_mod.named_parameters())
        grad_scale = max(q.grad.abs().max().item() for q in ref.parameters())
        logit_diff = (logits - ref_logits).abs().max().item() if last else 0.0
        loss_diff = abs(loss.item() - ref_loss.item()) if last else 0.0

    # 2) `steps` optimizer steps on the same batches, then the parameters
    ref_opt, opt = make_optimizer(ref, spec), make_optimizer(stage_mod, spec)
    curve_ref, curve_pp = [], []
    for step in range(p.steps):
        x, y = batch(spec, step, device)
        curve_ref.append(train_step(ref, ref_opt, x, y))
        curve_pp.append(pp_train_step(x, y))
    curve_pp = from_rank(curve_pp, world - 1, device)  # the losses live on the last stage
    with torch.no_grad():
        param_diff = max((q - ref_params[n]).abs().max().item() for n, q in stage_mod.named_parameters())
    curve_diff = max(abs(a - b) for a, b in zip(curve_ref, curve_pp))
    logit_diff, loss_diff, grad_diff, param_diff, curve_diff = max_over_ranks(
        [logit_diff, loss_diff, grad_diff, param_diff, curve_diff], device)

    # 3) speed, memory and the bubble of the pipeline alone
    del ref, ref_opt, ref_params, ref_logits, ref_loss, logits, loss
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    pipeline_seconds.clear()
    timing = time_steps(pp_train_step, spec, device)
    step_s = sum(pipeline_seconds[1:]) / len(pipeline_seconds[1:])  # without the warm-up step
    dist.barrier()
    mb_s = microbatch_seconds(stage_mod, spec, device, reps=max(3, p.timed_steps))
    bubble = max(0.0, 1.0 - p.micro_batches * mb_s / step_s)
    element_size = next(stage_mod.parameters()).element_size()
    return {
        "kind": "pp", "nproc": world, "backend": dist.get_backend(), "device": device.type,
        "schedule": p.schedule, "micro_batches": p.micro_batches,
        "stage_blocks": [list(r) for r in stage_blocks(spec.model.n_layer, world)],
        "sabotage": sabotage, "sabotage_means": "tied embedding gradient not summed across stages" if sabotage else None,
        "max_logit_diff": logit_diff, "loss_diff": loss_diff,
        "max_grad_diff": grad_diff, "max_grad_rel_diff": grad_diff / grad_scale if grad_scale else float("nan"),
        "max_param_diff": param_diff, "max_loss_diff": curve_diff, "steps": p.steps,
        "curve_single": list(enumerate(curve_ref)), "curve_parallel": list(enumerate(curve_pp)),
        "tokens_per_s": timing["tokens_per_s"], "seconds_per_step": timing["seconds_per_step"],
        "peak_memory_mb_per_rank": per_rank(timing["peak_memory_mb"], device),
        "param_state_mb_per_rank": per_rank(state_mb(stage_mod, spec), device),
        "params_per_rank": per_rank(sum(q.numel() for q in stage_mod.parameters()), device),
        "threads_per_rank": torch.get_num_threads(),
        "bubble": {"theory": w13.pipeline_bubble_fraction(world, p.micro_batches),
                   "measured_per_rank": per_rank(bubble, device),
                   "microbatch_seconds_per_rank": per_rank(mb_s, device),
                   "pipeline_seconds_per_step": max_over_ranks([step_s], device)[0]},
        "comm": comm_per_step(spec, world, element_size),
    }


if __name__ == "__main__":
    record(entry)(pp_process)  # record: torchrun's failure summary then shows the failing rank's exception
