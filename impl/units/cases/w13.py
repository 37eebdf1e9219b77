"""w13's cases: Megatron's column- and row-parallel linear layers simulated over the ranks, and the pipeline
bubble."""
from __future__ import annotations

import torch

from impl.units.cases import case, randn as _randn

# out != in, so that a transposed W or a split along the wrong dimension cannot pass by its shape
IN, OUT = 12, 8


def _layer(seed: int, out: int = OUT, inp: int = IN):
    return _randn(out, inp, seed=seed, scale=inp ** -0.5), _randn(out, seed=seed + 1, scale=0.5)


@case("w13.column_parallel_linear")
def _column(fn):
    x = _randn(2, 3, IN, seed=1)
    w, b = _layer(2)
    return {"world2": fn(x, w, b), "world4": fn(x, w, b, world=4), "no_bias": fn(x, w, None)}


@case("w13.row_parallel_linear")
def _row(fn):
    x = _randn(2, 3, IN, seed=5)
    w, b = _layer(6)
    return {"world2": fn(x, w, b), "world4": fn(x, w, b, world=4), "no_bias": fn(x, w, None)}


@case("w13.pipeline_bubble_fraction")
def _bubble(fn):
    pm = [(2, 4), (4, 8), (4, 16), (8, 8), (1, 4), (3, 1)]  # (stages, micro-batches)
    return {"fraction": torch.tensor([fn(p, m) for p, m in pm], dtype=torch.float64)}
