"""Megatron-style tensor parallelism of the w01 GPT, checked against the same model in one process.

    torchrun --nproc_per_node=2 -m impl.w13_parallel.tp --spec-json spec.json --out tp.json [--sabotage]
    # what run.run(spec, runs, "tp") launches (gloo on CPU, NCCL on GPU)

Each block's attention and MLP are split across the p ranks (Shoeybi et al. 2019, Megatron-LM, section 3):

    attention: qkv  column-parallel  each rank computes the q, k and v of its n_head/p heads
               proj row-parallel     each rank multiplies its heads' outputs by its columns of W_proj; the
                                     partial sums are all-reduced (g), then the bias is added once
    MLP:       fc   column-parallel  each rank computes 4C/p of the hidden units (GELU is elementwise: no comm)
               proj row-parallel     partial sums all-reduced (g)

Embeddings, LayerNorms and the (tied) LM head stay replicated: every rank computes them identically on the
all-reduced residual stream, so their gradients agree without any synchronisation. `f` (identity forward,
all-reduce backward) sits in front of each column-parallel layer because each rank's input gradient there is a
partial sum. Per layer: 2 all-reduces of B x T x C forward (g) and 2 backward (f).

The weights are split by hand with two autograd functions instead of DTensor's ColwiseParallel/RowwiseParallel:
the fused qkv must be split per q/k/v (a plain ColwiseParallel chunk of the 3C rows would give rank 0 all of q
and half of k), the attention must reshape by the local head count, and every all-reduce stays visible, so it
can be counted and, for the sabotage twin (`--sabotage`), removed.
"""
from __future__ import annotations

import copy
import gc

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.elastic.multiprocessing.errors import record

from impl.units import w01
from impl.w01_gpt.model import GPT, MLP, CausalSelfAttention
from impl.w13_parallel.common import (entry, make_optimizer, max_over_ranks, per_rank, reference_model, state_mb,
                                      time_steps, train_step, batch)
from impl.w13_parallel.spec import W13Spec
from impl.w13_parallel.units import column_shard, row_shard

COMM = {"all_reduces": 0, "bytes": 0}  # what the TP layers actually all-reduced, to check the analytic count


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    COMM["all_reduces"] += 1
    COMM["bytes"] += t.numel() * t.element_size()
    dist.all_reduce(t)  # SUM
    return t


class _CopyToTP(torch.autograd.Function):
    """Megatron's f: the input is replicated, so forward is the identity; each rank's input gradient covers only
    its shard of the output features, so backward sums them."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.clone(memory_format=torch.contiguous_format))  # never modify autograd's buffer


class _ReduceFromTP(torch.autograd.Function):
    """Megatron's g: forward sums the ranks' partial outputs; the gradient of a sum is replicated as it is."""

    @staticmethod
    def forward(ctx, x):
        return _all_reduce(x.clone(memory_format=torch.contiguous_format))

    @staticmethod
    def backward(ctx, grad):
        return grad


# --- which slice of a reference tensor a rank holds -----------------------------------------------------------
# column_shard (rows of W: output features) and row_shard (columns of W: input features) are the split that w13's
# units column_parallel_linear and row_parallel_linear are made of (impl/w13_parallel/units.py): one implementation
def qkv_shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """The fused (3C, ...) qkv weight or bias: the rank's heads from each of q, k and v, stacked as [q_r; k_r; v_r].
    Heads are contiguous blocks of C/n_head rows, so rank r's heads are rows [r C/p, (r+1) C/p) of each."""
    rest = t.shape[1:]
    return t.reshape(3, world, -1, *rest)[:, rank].reshape(-1, *rest)


def shard(name: str, full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """The part of the reference tensor `name` (a GPT parameter name, or its gradient) that this rank holds."""
    if ".attn.qkv." in name:
        return qkv_shard(full, rank, world)
    if ".mlp.fc." in name:
        return column_shard(full, rank, world)
    if name.endswith((".attn.proj.weight", ".mlp.proj.weight")):
        return row_shard(full, rank, world)
    return full  # replicated: embeddings, LayerNorms, row-parallel biases


# --- the layers ------------------------------------------------------------------------------------------
def _param(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.detach().clone())


class ColumnParallelLinear(nn.Module):
    """y_r = x W_r^T + b_r: this rank's slice of the output features from the full (replicated) input."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight, self.bias = _param(weight), _param(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_CopyToTP.apply(x), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = sum_r x_r W_r^T + b: each rank multiplies its slice of the input features; the sum is an all-reduce."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, skip_allreduce: bool = False):
        super().__init__()
        self.weight, self.bias = _param(weight), _param(bias)
        self.skip_allreduce = skip_allreduce  # sabotage: each rank keeps its partial sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if not self.skip_allreduce:
            y = _ReduceFromTP.apply(y)
        return y if self.bias is None else y + self.bias  # after the sum: the bias counts once, not p times


class TPAttention(nn.Module):
    def __init__(self, ref: CausalSelfAttention, rank: int, world: int, skip_allreduce: bool = False):
        super().__init__()
        C = ref.qkv.in_features
        self.n_head = ref.n_head // world  # this rank's heads
        self.width = C // world
        self.head_dim = C // ref.n_head
        bias = ref.qkv.bias
        self.qkv = ColumnParallelLinear(qkv_shard(ref.qkv.weight, rank, world),
                                        None if bias is None else qkv_shard(bias, rank, world))
        self.proj = RowParallelLinear(row_shard(ref.proj.weight, rank, world), ref.proj.bias, skip_allreduce)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.width, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = w01.causal_attention(q, k, v)  # heads are independent: no comm
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, self.width))


class TPMLP(nn.Module):
    def __init__(self, ref: MLP, rank: int, world: int, skip_allreduce: bool = False):
        super().__init__()
        bias = ref.fc.bias
        self.fc = ColumnParallelLinear(column_shard(ref.fc.weight, rank, world),
                                       None if bias is None else column_shard(bias, rank, world))
        self.proj = RowParallelLinear(row_shard(ref.proj.weight, rank, world), ref.proj.bias, skip_allreduce)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


def tensor_parallel_gpt(ref: GPT, rank: int, world: int, skip_allreduce: bool = False) -> GPT:
    """A copy of `ref` whose blocks hold this rank's shards. GPT.forward and Block.forward are reused as they
    are; parameter names stay those of the reference, which is what `shard(name, ...)` maps."""
    if ref.cfg.dropout:
        raise ValueError("tensor parallelism here assumes dropout 0 (masks would need per-region RNG states)")
    model = copy.deepcopy(ref)  # keeps the wte / lm_head tie
    for block in model.blocks:
        block.attn = TPAttention(block.attn, rank, world, skip_allreduce)
        block.mlp = TPMLP(block.mlp, rank, world, skip_allreduce)
    return model


def comm_per_step(spec: W13Spec, world: int, element_size: int = 4) -> dict:
    """Analytic all-reduce traffic of one training step: 4 per layer (2 forward, 2 backward) of B x T x C."""
    m, p = spec.model, spec.parity
    n = 4 * m.n_layer
    payload = n * p.batch_size * p.seq_len * m.n_embd * element_size
    return {"all_reduces_per_step": n, "bytes_per_step": payload,
            # a ring all-reduce sends 2 (p - 1) / p of the payload from every rank
            "ring_bytes_sent_per_rank_per_step": payload * 2 * (world - 1) / world}


def tp_process(spec: W13Spec, rank: int, world: int, device: torch.device, sabotage: bool) -> dict:
    ref = reference_model(spec, device)
    tp = tensor_parallel_gpt(ref, rank, world, skip_allreduce=sabotage)
    ref_params = dict(ref.named_parameters(remove_duplicate=False))

    # 1) one forward and backward on the same batch
    x, y = batch(spec, 0, device)
    _, ref_loss = ref(x, y)
    ref_loss.backward()
    _, loss = tp(x, y)
    loss.backward()
    with torch.no_grad():
        ref_logits, logits = ref(x)[0], tp(x)[0]  # every rank ends with the full logits: the LM head is replicated
        grad_diff = max((p.grad - shard(n, ref_params[n].grad, rank, world)).abs().max().item()
                        for n, p in tp.named_parameters())
        grad_scale = max(p.grad.abs().max().item() for p in ref.parameters())
        logit_diff = (logits - ref_logits).abs().max().item()
    loss_diff = abs(loss.item() - ref_loss.item())

    # 2) `steps` optimizer steps on the same batches, then the parameters
    ref_opt, tp_opt = make_optimizer(ref, spec), make_optimizer(tp, spec)
    curve_ref, curve_tp = [], []
    for step in range(spec.parity.steps):
        x, y = batch(spec, step, device)
        curve_ref.append(train_step(ref, ref_opt, x, y))
        curve_tp.append(train_step(tp, tp_opt, x, y))
    with torch.no_grad():
        param_diff = max((p - shard(n, ref_params[n], rank, world)).abs().max().item()
                         for n, p in tp.named_parameters())
    curve_diff = max(abs(a - b) for a, b in zip(curve_ref, curve_tp))
    logit_diff, loss_diff, grad_diff, param_diff, curve_diff = max_over_ranks(
        [logit_diff, loss_diff, grad_diff, param_diff, curve_diff], device)

    # 3) speed and memory of the TP model alone: the reference goes first
    del ref, ref_opt, ref_params, ref_logits, ref_loss, logits, loss
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    COMM.update(all_reduces=0, bytes=0)
    timing = time_steps(lambda x, y: train_step(tp, tp_opt, x, y), spec, device)
    steps_timed = spec.parity.timed_steps + 1  # the warm-up step communicates too
    element_size = next(tp.parameters()).element_size()
    return {
        "kind": "tp", "nproc": world, "backend": dist.get_backend(), "device": device.type,
        "sabotage": sabotage, "sabotage_means": "row-parallel outputs not all-reduced" if sabotage else None,
        "max_logit_diff": logit_diff, "loss_diff": loss_diff,
        "max_grad_diff": grad_diff, "max_grad_rel_diff": grad_diff / grad_scale if grad_scale else float("nan"),
        "max_param_diff": param_diff, "max_loss_diff": curve_diff, "steps": spec.parity.steps,
        "curve_single": list(enumerate(curve_ref)), "curve_parallel": list(enumerate(curve_tp)),
        "tokens_per_s": timing["tokens_per_s"], "seconds_per_step": timing["seconds_per_step"],
        "peak_memory_mb_per_rank": per_rank(timing["peak_memory_mb"], device),
        "param_state_mb_per_rank": per_rank(state_mb(tp, spec), device),
        "params_per_rank": per_rank(sum(p.numel() for p in tp.parameters()), device),
        "threads_per_rank": torch.get_num_threads(),
        "comm": {**comm_per_step(spec, world, element_size),
                 "all_reduces_per_step_counted": COMM["all_reduces"] / steps_timed,
                 "bytes_per_step_counted": COMM["bytes"] / steps_timed},
    }


if __name__ == "__main__":
    record(entry)(tp_process)  # record: torchrun's failure summary then shows the failing rank's exception
