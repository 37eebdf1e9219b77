"""w07's cases: the LoRA forward and merge, NF4 quantisation and its inverse.

The adapters are nonzero on both sides (peft starts B at zero, where every LoRA mistake computes the right
answer) and alpha / r is not 1; one merge is square, so swapping A and B gives a wrong weight of the right shape.
The NF4 input has blocks whose scales differ by orders of magnitude (one absmax for the whole tensor shows) and
a length that is not a multiple of the block size (the short last block has an absmax of its own)."""
from __future__ import annotations

import torch

from impl.units.cases import case, gen as _gen, randn as _randn


@case("w07.lora_linear")
def _lora_linear(fn):
    x = _randn(2, 5, 12, seed=1)
    weight, bias = _randn(10, 12, seed=2, scale=12 ** -0.5), _randn(10, seed=3, scale=0.1)
    A, B = _randn(4, 12, seed=4, scale=0.3), _randn(10, 4, seed=5, scale=0.3)
    A2, B2 = _randn(2, 12, seed=6, scale=0.3), _randn(10, 2, seed=7, scale=0.3)
    return {"out": fn(x, weight, bias, A, B, alpha=16.0),  # r = 4: scaling 4
            "rank_2_no_bias": fn(x, weight, None, A2, B2, alpha=1.0)}  # r = 2: scaling 0.5


@case("w07.lora_merge")
def _lora_merge(fn):
    W = _randn(8, 8, seed=8)
    A, B = _randn(2, 8, seed=9), _randn(8, 2, seed=10)
    W2 = _randn(6, 10, seed=11)
    A2, B2 = _randn(3, 10, seed=12), _randn(6, 3, seed=13)
    square = fn(W, A, B, alpha=8.0)  # r = 2: scaling 4
    return {"square": square, "weight_unchanged": W, "wide": fn(W2, A2, B2, alpha=1.5)}  # r = 3: scaling 0.5


@case("w07.nf4_quantize")
def _nf4_quantize(fn):
    scales = torch.tensor([0.01, 1.0, 100.0, 3.0, 0.5, 20.0])[:, None]
    x = _randn(6, 64, seed=14) * scales  # blocksize 64: one row per block
    codes, absmax = fn(x, blocksize=64)
    tail = _randn(100, seed=15)  # blocksize 32: three full blocks and one of 4
    tail[[5, 40, 97]] *= 10.0
    codes_t, absmax_t = fn(tail, blocksize=32)
    return {"codes": codes, "absmax": absmax, "codes_tail": codes_t, "absmax_tail": absmax_t}


@case("w07.nf4_dequantize")
def _nf4_dequantize(fn):
    codes = torch.randint(0, 16, (4, 32), generator=_gen(16), dtype=torch.uint8)
    absmax = torch.rand(4, generator=_gen(17)) * 5 + 0.5
    codes_t = torch.randint(0, 16, (50,), generator=_gen(18), dtype=torch.uint8)
    absmax_t = torch.tensor([2.0, 0.25])
    return {"out": fn(codes, absmax, blocksize=32), "tail": fn(codes_t, absmax_t, blocksize=32),
            "levels": fn(torch.arange(16, dtype=torch.uint8), torch.ones(1), blocksize=16)}
