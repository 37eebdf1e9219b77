"""w13's units, the reference implementations: Megatron's two ways of splitting a linear layer over the ranks of
a tensor-parallel group, simulated in one process, and the idle fraction of a pipeline schedule.

The split itself (which slice of W a rank holds: `column_shard`, `row_shard` below) is the one tensor-parallel
training uses (tp.py builds every rank's layers from these two functions); the units are what the ranks compute
from their slices and how the communication combines them. pp.py reports the bubble through
`impl.units.w13.pipeline_bubble_fraction`, so a learner's version replaces it there.

Shapes: W (out, in) as in F.linear (y = x Wᵀ + b), x (..., in), p ranks (`world`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from impl.units import unit


# --- which slice of a reference tensor a rank holds (helpers, not units: tp.py shards the GPT with them) --------
def column_shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rows of W (out, in) = output features: column-parallel weight and bias."""
    return t.chunk(world, dim=0)[rank]


def row_shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Columns of W (out, in) = input features: row-parallel weight."""
    return t.chunk(world, dim=1)[rank]


# --- the units ------------------------------------------------------------------------------------------------
@unit(rtol=1e-5, atol=1e-5)
def column_parallel_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           world: int = 2) -> torch.Tensor:
    """Megatron's column-parallel linear layer over `world` ranks, simulated in one process: rank r holds the
    r-th of `world` equal blocks of W's rows (output features), weight (out, in) -> (out / world, in), and the
    same block of the bias (out,) -> (out / world,); every rank sees the whole input x (..., in) and computes
    its block of the output features, x W_rᵀ + b_r (..., out / world); the all-gather concatenates the ranks'
    blocks in rank order along the last dimension. Returns (..., out), equal to F.linear(x, weight, bias)."""
    parts = [F.linear(x, column_shard(weight, r, world), None if bias is None else column_shard(bias, r, world))
             for r in range(world)]
    return torch.cat(parts, dim=-1)


@unit(rtol=1e-5, atol=1e-5)
def row_parallel_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        world: int = 2) -> torch.Tensor:
    """Megatron's row-parallel linear layer over `world` ranks, simulated in one process: rank r holds the r-th of
    `world` equal blocks of W's columns (input features), weight (out, in) -> (out, in / world), and the same
    block of the input's features, x (..., in) -> (..., in / world); each rank computes the partial product
    x_r W_rᵀ (..., out) without the bias; the all-reduce sums the partials over the ranks, and the bias (out,) is
    added once, after the sum. Returns (..., out), equal to F.linear(x, weight, bias)."""
    y = sum(F.linear(x.chunk(world, dim=-1)[r], row_shard(weight, r, world)) for r in range(world))
    return y if bias is None else y + bias


@unit(rtol=1e-12, atol=1e-12)
def pipeline_bubble_fraction(p: int, m: int) -> float:
    """The idle fraction of a synchronous pipeline step (GPipe, 1F1B) with p stages and m micro-batches: each
    stage is busy for m of the m + p - 1 time slots of a step and idle for the p - 1 others (filling and draining
    the pipeline), so (p - 1) / (m + p - 1). A float in [0, 1)."""
    return (p - 1) / (m + p - 1)
