"""w05's units, the reference implementations: how ZeRO splits a flat tensor over the data-parallel ranks and puts
it back together, and what each rank then holds (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward
Training Trillion Parameter Models", section 5 and figure 1).

The milestone trains through DeepSpeed, which does the partitioning itself: these units are written from the
paper and from DeepSpeed 0.19.8's ZeRO-1/2 optimizer (deepspeed/runtime/zero/stage_1_and_2.py), and
tests/units/test_w05_twins.py checks that they equal what DeepSpeed computes and holds on the same inputs.
(w05's own memory figures are measured, tensor by tensor on each rank (train.memory_held), not computed.)

Shapes: a flat 1-D tensor of n elements (a parameter group's parameters, gradients or optimizer state flattened
in order), N ranks (`world_size`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from impl.units import unit


@unit(rtol=0.0, atol=0.0)
def zero_partition(flat: torch.Tensor, rank: int, world_size: int, alignment: int = 2) -> torch.Tensor:
    """Rank `rank`'s partition of the flat 1-D tensor `flat` (n,), as DeepSpeed's ZeRO stage 1/2 splits it:
    zeros are appended until the length is a multiple of alignment x world_size (DeepSpeed: alignment 2, so
    that every partition starts 4-byte aligned in 16-bit precision; alignment 1 pads to a multiple of
    world_size only), and the padded length n_p is cut into world_size equal consecutive parts: rank r holds
    elements [r n_p / N, (r + 1) n_p / N). Returns (n_p / N,); the last ranks' parts end in the padding."""
    multiple = alignment * world_size
    padded = F.pad(flat, (0, -flat.numel() % multiple))
    return padded.chunk(world_size)[rank]


@unit(rtol=0.0, atol=0.0)
def zero_gather(partitions: list[torch.Tensor], numel: int) -> torch.Tensor:
    """The inverse of zero_partition (what ZeRO's all-gather rebuilds): the ranks' partitions (a list in rank order,
    each (n_p / N,)) concatenated in rank order, the padding after the first `numel` elements removed. -> (numel,)"""
    return torch.cat(partitions)[:numel]


@unit(rtol=1e-12, atol=0.0)
def zero_memory_per_rank(num_params: int, world_size: int, stage: int, k: int = 12) -> float:
    """Bytes of model state per rank when a model of num_params (Ψ) parameters trains with mixed-precision Adam on
    world_size (N) data-parallel ranks, by the ZeRO paper's figure 1: 2Ψ for the 16-bit parameters, 2Ψ for the
    16-bit gradients and KΨ for the optimizer state (K = 12 for Adam: an fp32 master copy of the parameters,
    momentum and variance). Stage 0 (plain data parallelism) replicates all three: (2 + 2 + K)Ψ; stage 1 also
    partitions the optimizer state: 2Ψ + 2Ψ + KΨ/N; stage 2 also the gradients: 2Ψ + (2 + K)Ψ/N; stage 3 also
    the parameters: (2 + 2 + K)Ψ/N. A float (e.g. Ψ = 7.5e9, N = 64: 120e9, 31.4e9, 16.6e9, 1.88e9 bytes)."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO has stages 0 to 3, not {stage}")
    params, grads, optim = 2.0 * num_params, 2.0 * num_params, float(k) * num_params
    if stage >= 1:
        optim /= world_size
    if stage >= 2:
        grads /= world_size
    if stage >= 3:
        params /= world_size
    return params + grads + optim
