"""w07's units, the reference implementations of what LoRA and QLoRA are made of: the LoRA forward and merge
(Hu et al. 2021) and the 4-bit NormalFloat quantiser of QLoRA (Dettmers et al. 2023), each written from the paper.

The milestone's code (tune.py) trains with the libraries, peft for the adapters and bitsandbytes for NF4, and
keeps them: these units are what those libraries compute, written small enough to read, and
tests/units/test_w07_twins.py binds each one to its library (peft's LoRA Linear and merge_and_unload,
bitsandbytes' quantize_4bit / dequantize_4bit on CPU) on the same inputs.

Shapes: N any leading dimensions, d_in / d_out a linear layer's input / output features, r the LoRA rank.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from impl.units import unit

# The 16 NF4 levels: QLoRA (arXiv 2305.14314), appendix E, as bitsandbytes stores them
# (bitsandbytes.functional.get_4bit_type("nf4"), made by its create_normal_map(offset=0.9677083)): quantiles of
# N(0, 1) with equal probability mass, scaled to [-1, 1], with an exact 0.
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)


@unit(rtol=1e-5, atol=1e-5)
def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_A: torch.Tensor,
                lora_B: torch.Tensor, alpha: float) -> torch.Tensor:
    """A linear layer with a LoRA adapter: y = x Wᵀ + b + (alpha / r) · x Aᵀ Bᵀ, r = lora_A.shape[0] the rank.
    x: (N..., d_in); weight W: (d_out, d_in); bias b: (d_out,) or None; lora_A: (r, d_in); lora_B: (d_out, r).
    -> (N..., d_out). (The base layer and the adapter are two products added: W + (alpha / r) B A is never
    formed here; `lora_merge` forms it.)"""
    r = lora_A.shape[0]
    return F.linear(x, weight, bias) + F.linear(F.linear(x, lora_A), lora_B) * (alpha / r)


@unit(rtol=1e-6, atol=1e-6)
def lora_merge(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, alpha: float) -> torch.Tensor:
    """The adapter folded into the base weight: W + (alpha / r) · B A, r = lora_A.shape[0], so that a plain linear
    layer with the result computes what `lora_linear` computes. weight W: (d_out, d_in); lora_A: (r, d_in);
    lora_B: (d_out, r). -> (d_out, d_in), a new tensor (W is not changed)."""
    r = lora_A.shape[0]
    return weight + (lora_B @ lora_A) * (alpha / r)


@unit(rtol=1e-6, atol=1e-6)
def nf4_quantize(x: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise 4-bit NormalFloat (QLoRA), without double quantisation. x (any shape) is read flat, in row-major
    order, in blocks of `blocksize` values (the last block may be shorter). Per block: absmax = max |value|; each
    value is divided by its block's absmax (a block of zeros stays 0) and replaced by the index 0..15 of the
    nearest of the 16 NF4 levels (on an exact tie, the lower index). The levels, in index order (QLoRA appendix E;
    bitsandbytes' get_4bit_type("nf4")):
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0.
    -> (codes: uint8, the shape of x, values 0..15, one per value, not packed; absmax: float32,
    (ceil(x.numel() / blocksize),))."""
    levels = torch.tensor(NF4, dtype=torch.float32, device=x.device)
    flat = x.reshape(-1).float()
    n = flat.numel()
    blocks = F.pad(flat, (0, (-n) % blocksize)).view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    codes = (scaled[..., None] - levels).abs().argmin(dim=-1)  # argmin: the first (lower) index on a tie
    return codes.reshape(-1)[:n].reshape(x.shape).to(torch.uint8), absmax


@unit(rtol=1e-6, atol=1e-7)
def nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """The inverse of `nf4_quantize`: each code (an index 0..15 into the 16 NF4 levels listed there) becomes its
    level times the absmax of its block, the blocks being `blocksize` consecutive values of codes read flat in
    row-major order (the last may be shorter). codes: integers, any shape; absmax: (ceil(codes.numel() /
    blocksize),). -> float32, the shape of codes."""
    levels = torch.tensor(NF4, dtype=torch.float32, device=codes.device)
    flat = levels[codes.reshape(-1).long()]
    n = flat.numel()
    blocks = F.pad(flat, (0, (-n) % blocksize)).view(-1, blocksize)
    return (blocks * absmax.float()[:, None]).reshape(-1)[:n].reshape(codes.shape)
