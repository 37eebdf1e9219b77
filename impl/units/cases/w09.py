"""w09's cases: int8 absmax quantisation and its inverse, and one KV-cache decoding step of w01's GPT.

The int8 input's rows differ in scale by orders of magnitude (one scale for the whole tensor shows), one row is
all zeros, and most values fall between two integers after scaling (truncating instead of rounding shows). The
KV-cache case is a small seeded w01 GPT: the query, key and value of its first attention layer on a prompt, the
last position being the new token and the others the cache (its query and keys scaled up so that attention is far
from uniform: attending to the wrong positions shows)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from impl.units.cases import case, gen as _gen, randn as _randn


@case("w09.int8_absmax_quantize")
def _int8_quantize(fn):
    x = _randn(6, 40, seed=1) * torch.tensor([0.02, 1.0, 50.0, 3.0, 0.0, 7.5])[:, None]
    x[1, 3] = 9.0  # an outlier: its row's scale is set by it
    q, scale = fn(x)
    x3 = _randn(2, 3, 16, seed=2, scale=4.0)  # leading dimensions: every (i, j) a row
    q3, scale3 = fn(x3)
    q4, scale4 = fn(x, bits=4)  # 7 levels a side
    return {"q": q, "scale": scale, "q_3d": q3, "scale_3d": scale3, "q_4bit": q4, "scale_4bit": scale4}


@case("w09.int8_absmax_dequantize")
def _int8_dequantize(fn):
    q = torch.randint(-127, 128, (5, 16), generator=_gen(3)).to(torch.int8)
    scale = (torch.rand(5, 1, generator=_gen(4)) + 0.1) / 127
    return {"out": fn(q, scale), "3d": fn(q.view(5, 2, 8), scale.view(5, 1, 1).expand(5, 2, 1))}


def seeded_gpt(seed: int = 0):
    """A small w01 GPT whose weights come from `seed` (without touching torch's global RNG), its attention sharp."""
    from impl.w01_gpt.model import GPT, GPTConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(GPTConfig(vocab_size=40, context=16, n_layer=2, n_head=2, n_embd=16))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:32].mul_(20.0)  # q and k: std 0.4 instead of 0.02
    return model.eval()


def first_layer_qkv(model, idx: torch.Tensor):
    """The query, key and value per head, (B, H, T, D), of the first attention layer of `model` on `idx`
    (computed here from its parameters, not through w01's units)."""
    B, T = idx.shape
    C, H = model.cfg.n_embd, model.cfg.n_head
    block = model.blocks[0]
    with torch.no_grad():
        x = model.wte.weight[idx] + model.wpe.weight[:T]
        h = F.layer_norm(x, (C,), block.ln_1.weight, block.ln_1.bias)
        q, k, v = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias).split(C, dim=2)
    return tuple(t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))


@case("w09.kv_cache_decode_step")
def _kv_step(fn):
    model = seeded_gpt(0)
    idx = torch.randint(0, 40, (2, 7), generator=_gen(5))
    q, k, v = first_layer_qkv(model, idx)
    out, k_cache, v_cache = fn(q[:, :, -1:], k[:, :, -1:], v[:, :, -1:], k[:, :, :-1], v[:, :, :-1])
    empty = k[:, :, :0]
    first, k1, v1 = fn(q[:, :, :1], k[:, :, :1], v[:, :, :1], empty, empty)  # the first token: nothing cached
    return {"out": out, "k_cache": k_cache, "v_cache": v_cache, "first_out": first, "first_k_cache": k1}
