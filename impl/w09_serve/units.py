"""w09's units, the reference implementations of what serving a quantised model is made of: LLM.int8()'s
vector-wise absmax quantisation (Dettmers et al. 2022, without the outlier decomposition) and one decoding step
of attention with a key/value cache.

The milestone's int8 and nf4 variants are bitsandbytes' (quantize.py loads them through transformers) and stay
so; tests/units/test_w09_twins.py binds int8_absmax_quantize / int8_absmax_dequantize to bitsandbytes'
int8_vectorwise_quant / int8_vectorwise_dequant on CPU. The milestone's own per-row round-to-nearest quantiser
(quantize.round_to_nearest, the sabotage twin at 2 bits) is these two units. The KV-cache step is tested
against w01's GPT: decoding token by token through it gives the logits of the full forward.

Shapes: R rows (any leading dimensions), C values per row; B batch, H heads, T cached positions, D per head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from impl.units import unit


@unit(rtol=1e-6, atol=1e-6)
def int8_absmax_quantize(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric vector-wise (per row) absmax quantisation, LLM.int8()'s, without its outlier columns. Each row
    (the last dimension) gets scale = absmax / L, absmax = max |value| of the row (at least 1e-8, so a row of
    zeros quantises to zeros) and L = 2^(bits-1) - 1 levels a side (127 for int8; at least 1; bits <= 8); a value
    becomes round(value / scale) (round half to even, torch.round), kept within [-L, L]. The arithmetic is in x's
    dtype. x: (R..., C) -> (q: int8 (R..., C); scale: (R..., 1), x's dtype)."""
    levels = max(1, 2 ** (bits - 1) - 1)
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / levels
    return (x / scale).round().clamp(-levels, levels).to(torch.int8), scale


@unit(rtol=1e-6, atol=1e-7)
def int8_absmax_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The inverse of `int8_absmax_quantize`: q times its row's scale (scale is absmax / L already, not absmax).
    q: int8 (R..., C); scale: (R..., 1). -> (R..., C) in scale's dtype."""
    return q.to(scale.dtype) * scale


@unit(rtol=1e-4, atol=1e-5)
def kv_cache_decode_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                         v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding step of causal self-attention with a key/value cache. q, k, v: the new token's query, key and
    value per head, (B, H, 1, D); k_cache, v_cache: the keys and values of the T positions before it,
    (B, H, T, D) (T may be 0). The new key and value are appended after the cached ones, and the new query attends
    to all T + 1 positions, itself included (no mask: none of them comes after it): softmax(q kᵀ / sqrt(D)) v.
    Returns (out (B, H, 1, D), k_cache (B, H, T + 1, D), v_cache (B, H, T + 1, D)): out is the last position of
    causal attention over the whole sequence, and the caches are the next step's."""
    k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
    return F.scaled_dot_product_attention(q, k_cache, v_cache), k_cache, v_cache
