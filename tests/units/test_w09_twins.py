"""w09's units are sharp (a plausible wrong implementation of each fails its snapshot), the int8 pair is what
bitsandbytes' LLM.int8() vector-wise quantisation computes on CPU, the KV-cache step decodes w01's GPT token by
token to the logits of its full forward, and the milestone's round-to-nearest quantiser is the int8 pair.

The binding tests use the reference units (impl/w09_serve/units.py) and the reference w01 GPT, whatever package
--impl selects: they are about the reference; the snapshot tests are about the selected units."""
import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from impl import units
from impl.units import check
from impl.units.cases.w09 import first_layer_qkv, seeded_gpt

REF = units.catalogue("w09")


# ---- the twins ------------------------------------------------------------------------------------------------
def int8_with_one_scale_for_the_whole_tensor(x, bits=8):
    levels = max(1, 2 ** (bits - 1) - 1)
    scale = x.abs().amax().clamp(min=1e-8) / levels * torch.ones_like(x[..., :1])
    return (x / scale).round().clamp(-levels, levels).to(torch.int8), scale


def int8_rounding_by_truncation(x, bits=8):
    levels = max(1, 2 ** (bits - 1) - 1)
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / levels
    return (x / scale).to(torch.int8), scale  # a cast truncates towards zero


def int8_dequantize_treating_the_scale_as_absmax(q, scale):  # bitsandbytes' stats are absmax: /127 there
    return q.to(scale.dtype) * scale / 127


def kv_step_attending_only_to_the_new_token(q, k, v, k_cache, v_cache):
    return F.scaled_dot_product_attention(q, k, v), torch.cat([k_cache, k], 2), torch.cat([v_cache, v], 2)


def kv_step_forgetting_to_append(q, k, v, k_cache, v_cache):
    if k_cache.shape[2] == 0:
        return torch.zeros_like(q), k_cache, v_cache
    return F.scaled_dot_product_attention(q, k_cache, v_cache), k_cache, v_cache


def kv_step_with_a_causal_mask(q, k, v, k_cache, v_cache):  # torch's causal mask is top-left aligned: with one
    k_cache, v_cache = torch.cat([k_cache, k], 2), torch.cat([v_cache, v], 2)  # query it sees position 0 only
    return F.scaled_dot_product_attention(q, k_cache, v_cache, is_causal=True), k_cache, v_cache


TWINS = [
    ("int8_absmax_quantize", int8_with_one_scale_for_the_whole_tensor),
    ("int8_absmax_quantize", int8_rounding_by_truncation),
    ("int8_absmax_dequantize", int8_dequantize_treating_the_scale_as_absmax),
    ("kv_cache_decode_step", kv_step_attending_only_to_the_new_token),
    ("kv_cache_decode_step", kv_step_forgetting_to_append),
    ("kv_cache_decode_step", kv_step_with_a_causal_mask),
]


def test_every_unit_has_a_twin():
    assert {name for name, _ in TWINS} == set(units.catalogue("w09"))


@pytest.mark.parametrize("name,twin", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_a_plausible_wrong_unit_fails_its_snapshot(name, twin):
    status, why = check.check("w09", name, twin)
    assert status != "pass", f"{twin.__name__} passed the {name} snapshot"


# ---- int8 bound to bitsandbytes ------------------------------------------------------------------------------
def _bnb():
    return pytest.importorskip("bitsandbytes.functional")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int8_is_bitsandbytes_int8_vectorwise_quant_without_outliers(dtype):
    """bitsandbytes.functional.int8_vectorwise_quant(A, threshold=0.0) (LLM.int8() without the outlier
    decomposition) returns the int8 values and each row's absmax, computed in float32 whatever A's dtype;
    int8_vectorwise_dequant multiplies by absmax / 127.

    On the same float32 values: 127 x the unit's scale is bitsandbytes' absmax within 1e-6 relative, and the int8
    values are equal, except that bitsandbytes computes round(x * (127 / absmax)) and the unit round(x / (absmax /
    127)): a value exactly on a half-integer (bfloat16's 8-bit mantissa makes some) can round the other way, so
    at most 0.1% of them may differ, by one (float32 and float16 inputs: none do). Given the same int8 values,
    the dequantisation is bitsandbytes' within 1e-6 relative. The unit run in x's own half precision (as the
    milestone's round_to_nearest runs on a bf16 model) rounds its scale to that precision: still at most one off."""
    bnb = _bnb()
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(16, 256, generator=g) * torch.logspace(-2, 2, 16)[:, None]).to(dtype)
    q_theirs, absmax, outlier_cols = bnb.int8_vectorwise_quant(x.clone(), threshold=0.0)
    assert outlier_cols is None
    q, scale = REF["int8_absmax_quantize"](x.float())
    assert q.dtype == q_theirs.dtype == torch.int8 and scale.shape == (16, 1)
    torch.testing.assert_close(scale.squeeze(1) * 127, absmax, rtol=1e-6, atol=0.0)
    off = (q.int() - q_theirs.int()).abs()
    assert int(off.max()) <= 1 and int((off > 0).sum()) <= x.numel() // 1000
    if dtype != torch.bfloat16:
        assert torch.equal(q, q_theirs)
    torch.testing.assert_close(REF["int8_absmax_dequantize"](q_theirs, absmax[:, None] / 127),
                               bnb.int8_vectorwise_dequant(q_theirs, absmax), rtol=1e-6, atol=0.0)
    ours = REF["int8_absmax_dequantize"](q, scale)  # the round trip: half a step per value at most
    assert bool(((ours - x.float()).abs() <= scale / 2 * (1 + 1e-5) + x.float().abs() * 1e-6).all())
    q_own, _ = REF["int8_absmax_quantize"](x)
    assert int((q_own.int() - q_theirs.int()).abs().max()) <= 1


def test_round_to_nearest_in_the_milestone_is_the_int8_units():
    """quantize.round_to_nearest (w09's quantiser at any bit width, its sabotage twin at 2 bits) quantises and
    dequantises each linear weight with the units: bits=8 equals the units, bits=2 leaves three values a row."""
    from impl.w09_serve.quantize import round_to_nearest

    g = torch.Generator().manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(24, 12), torch.nn.Linear(12, 6))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    originals = [m.weight.detach().clone() for m in model]
    with _the_reference():
        round_to_nearest(model, 8)
    for m, w in zip(model, originals):
        assert torch.equal(m.weight, REF["int8_absmax_dequantize"](*REF["int8_absmax_quantize"](w)))
    with _the_reference():
        round_to_nearest(model, 2)
    assert all(len(row.unique()) <= 3 for m in model for row in m.weight)


# ---- the KV-cache step decodes w01's GPT --------------------------------------------------------------------
@contextlib.contextmanager
def _the_reference():
    """w01's and w09's reference units for the duration (the GPT's forward goes through impl.units.w01)."""
    saved, fallback = units.selected(), units.fallback()
    units.select(None)
    try:
        yield
    finally:
        units.select(saved, fallback)


def decode_with_the_cache(model, idx: torch.Tensor, step) -> torch.Tensor:
    """The GPT's logits (B, T, V), computed one token at a time: each attention layer keeps its keys and values in
    a cache and `step` (a kv_cache_decode_step) attends from the new token; nothing is recomputed."""
    B, T = idx.shape
    C, H = model.cfg.n_embd, model.cfg.n_head
    caches = [(torch.zeros(B, H, 0, C // H), torch.zeros(B, H, 0, C // H)) for _ in model.blocks]
    logits = []
    with torch.no_grad():
        for t in range(T):
            x = model.wte.weight[idx[:, t:t + 1]] + model.wpe.weight[t]  # (B, 1, C)
            for i, block in enumerate(model.blocks):
                q, k, v = (u.view(B, 1, H, C // H).transpose(1, 2)
                           for u in F.linear(block.ln_1(x), block.attn.qkv.weight, block.attn.qkv.bias).split(C, 2))
                y, k_cache, v_cache = step(q, k, v, *caches[i])
                caches[i] = (k_cache, v_cache)
                x = x + block.attn.proj(y.transpose(1, 2).reshape(B, 1, C))
                x = x + block.mlp(block.ln_2(x))
            logits.append(F.linear(model.ln_f(x), model.wte.weight))
    return torch.cat(logits, dim=1)


def test_decoding_token_by_token_with_the_cache_gives_the_full_forwards_logits():
    """At every position, the logits from the cache equal those of the full forward (w01's GPT, its causal
    attention over the whole sequence) within 1e-5: the step is the full forward's last position."""
    model = seeded_gpt(0)
    idx = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(7))
    with _the_reference():
        full, _ = model(idx)
    cached = decode_with_the_cache(model, idx, REF["kv_cache_decode_step"])
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def test_the_step_is_the_last_position_of_causal_attention_over_the_whole_sequence():
    model = seeded_gpt(0)
    idx = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(8))
    q, k, v = first_layer_qkv(model, idx)
    out, k_cache, v_cache = REF["kv_cache_decode_step"](q[:, :, -1:], k[:, :, -1:], v[:, :, -1:],
                                                        k[:, :, :-1], v[:, :, :-1])
    full = units.catalogue("w01")["causal_attention"](q, k, v)
    torch.testing.assert_close(out, full[:, :, -1:], rtol=1e-5, atol=1e-6)
    assert torch.equal(k_cache, k) and torch.equal(v_cache, v)
    weights = (q[:, :, -1:] @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)  # the case is sharp:
    assert float(weights.max()) > 0.5  # some query attends mostly to one position


@pytest.mark.parametrize("twin", [t for n, t in TWINS if n == "kv_cache_decode_step"],
                         ids=lambda t: t.__name__)
def test_a_wrong_step_decodes_to_other_logits(twin):
    model = seeded_gpt(0)
    idx = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(7))
    with _the_reference():
        full, _ = model(idx)
    assert not torch.allclose(decode_with_the_cache(model, idx, twin), full, rtol=1e-3, atol=1e-3)


def kv_step_from_matmuls(q, k, v, k_cache, v_cache):  # right, written by hand: passes within the tolerance
    k_cache, v_cache = torch.cat([k_cache, k], 2), torch.cat([v_cache, v], 2)
    scores = q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return units.catalogue("w01")["softmax"](scores, -1) @ v_cache, k_cache, v_cache


def int8_with_the_reciprocal_like_bitsandbytes(x, bits=8):  # right, bitsandbytes' arithmetic: passes
    levels = max(1, 2 ** (bits - 1) - 1)
    absmax = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8)
    return (x * (levels / absmax)).round().clamp(-levels, levels).to(torch.int8), absmax / levels


@pytest.mark.parametrize("name,right", [("kv_cache_decode_step", kv_step_from_matmuls),
                                        ("int8_absmax_quantize", int8_with_the_reciprocal_like_bitsandbytes)],
                         ids=lambda v: getattr(v, "__name__", v))
def test_a_right_unit_written_another_way_passes(name, right):
    assert check.check("w09", name, right) == ("pass", "")
