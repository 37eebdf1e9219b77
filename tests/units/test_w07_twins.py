"""w07's units are sharp (a plausible wrong implementation of each fails its snapshot) and they are what the
milestone's libraries compute: lora_linear / lora_merge what peft's LoRA Linear and merge_and_unload compute,
nf4_quantize / nf4_dequantize what bitsandbytes' quantize_4bit / dequantize_4bit (quant_type "nf4", no double
quantisation) compute on CPU. The binding tests use the reference units (impl/w07_lora/units.py), whatever
package --impl selects: they are about the reference, the snapshot tests about the selected units."""
import pytest
import torch
import torch.nn.functional as F

from impl import units
from impl.units import check
from impl.w07_lora.units import NF4

REF = units.catalogue("w07")


# ---- the twins ------------------------------------------------------------------------------------------------
def lora_without_the_scaling(x, weight, bias, lora_A, lora_B, alpha):
    return F.linear(x, weight, bias) + F.linear(F.linear(x, lora_A), lora_B)


def lora_scaled_by_alpha_over_sqrt_r(x, weight, bias, lora_A, lora_B, alpha):  # rsLoRA's scaling, not LoRA's
    return F.linear(x, weight, bias) + F.linear(F.linear(x, lora_A), lora_B) * (alpha / lora_A.shape[0] ** 0.5)


def merge_with_a_and_b_swapped(weight, lora_A, lora_B, alpha):  # Aᵀ Bᵀ = (B A)ᵀ: the delta transposed
    return weight + (lora_A.T @ lora_B.T) * (alpha / lora_A.shape[0])


def merge_in_place(weight, lora_A, lora_B, alpha):  # right numbers, but the base weight is changed
    return weight.add_((lora_B @ lora_A) * (alpha / lora_A.shape[0]))


UNIFORM_4BIT = torch.linspace(-1.0, 1.0, 16)


def _nearest_on(levels, x, blocksize, per_tensor=False):
    flat = x.reshape(-1).float()
    n = flat.numel()
    blocks = F.pad(flat, (0, (-n) % blocksize)).view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    if per_tensor:
        absmax = torch.full_like(absmax, float(flat.abs().max()))
    codes = (blocks[..., None] / absmax[:, None, None] - levels).abs().argmin(-1)
    return codes.reshape(-1)[:n].reshape(x.shape).to(torch.uint8), absmax


def nf4_on_a_uniform_grid(x, blocksize=64):  # 16 evenly spaced levels instead of the normal-float ones
    return _nearest_on(UNIFORM_4BIT, x, blocksize)


def nf4_with_one_absmax_for_the_whole_tensor(x, blocksize=64):
    return _nearest_on(torch.tensor(NF4), x, blocksize, per_tensor=True)


def dequantize_on_a_uniform_grid(codes, absmax, blocksize=64):
    flat = UNIFORM_4BIT[codes.reshape(-1).long()]
    n = flat.numel()
    blocks = F.pad(flat, (0, (-n) % blocksize)).view(-1, blocksize)
    return (blocks * absmax[:, None]).reshape(-1)[:n].reshape(codes.shape)


TWINS = [
    ("lora_linear", lora_without_the_scaling),
    ("lora_linear", lora_scaled_by_alpha_over_sqrt_r),
    ("lora_merge", merge_with_a_and_b_swapped),
    ("lora_merge", merge_in_place),
    ("nf4_quantize", nf4_on_a_uniform_grid),
    ("nf4_quantize", nf4_with_one_absmax_for_the_whole_tensor),
    ("nf4_dequantize", dequantize_on_a_uniform_grid),
]


def test_every_unit_has_a_twin():
    assert {name for name, _ in TWINS} == set(units.catalogue("w07"))


@pytest.mark.parametrize("name,twin", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_a_plausible_wrong_unit_fails_its_snapshot(name, twin):
    status, why = check.check("w07", name, twin)
    assert status != "pass", f"{twin.__name__} passed the {name} snapshot"


# ---- bound to peft -------------------------------------------------------------------------------------------
def _peft_linear(weight, bias, lora_A, lora_B, alpha):
    """A peft LoRA model around one torch Linear with these weights, and its LoRA layer (a peft LoraLayer)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    base = torch.nn.Sequential(torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None))
    model = get_peft_model(base, LoraConfig(r=lora_A.shape[0], lora_alpha=alpha, lora_dropout=0.0,
                                            target_modules=["0"]))
    layer = model.base_model.model[0]
    assert isinstance(layer, LoraLayer)
    with torch.no_grad():
        layer.base_layer.weight.copy_(weight)
        if bias is not None:
            layer.base_layer.bias.copy_(bias)
        layer.lora_A["default"].weight.copy_(lora_A)
        layer.lora_B["default"].weight.copy_(lora_B)
    assert layer.scaling["default"] == alpha / lora_A.shape[0]
    return model, layer


def _lora_weights(d_in=12, d_out=10, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(d_out, d_in, generator=g) * d_in ** -0.5, torch.randn(d_out, generator=g) * 0.1,
            torch.randn(r, d_in, generator=g) * 0.3, torch.randn(d_out, r, generator=g) * 0.3)


@pytest.mark.parametrize("alpha,r,with_bias", [(16.0, 4, True), (8.0, 8, False), (32.0, 2, True)])
def test_lora_linear_is_what_a_peft_lora_linear_computes(alpha, r, with_bias):
    """Exactly (peft adds the adapter's two products, scaled, to the base layer's output, as the unit does);
    allclose at 1e-6 is the stated bound in case a peft version reorders the sum."""
    weight, bias, A, B = _lora_weights(r=r)
    bias = bias if with_bias else None
    model, layer = _peft_linear(weight, bias, A, B, alpha)
    x = torch.randn(3, 7, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = layer(x)
    ours = REF["lora_linear"](x, weight, bias, A, B, alpha)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(F.linear(x, weight, bias), theirs, atol=1e-3)  # the adapter did something


def test_lora_merge_is_the_weight_peft_merge_and_unload_leaves():
    weight, bias, A, B = _lora_weights(r=4, seed=2)
    model, _ = _peft_linear(weight, bias, A, B, alpha=16.0)
    merged = model.merge_and_unload()[0]
    assert type(merged) is torch.nn.Linear
    torch.testing.assert_close(REF["lora_merge"](weight, A, B, 16.0), merged.weight.detach(), rtol=1e-6, atol=1e-6)
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(3))  # and the merged layer computes lora_linear
    torch.testing.assert_close(F.linear(x, REF["lora_merge"](weight, A, B, 16.0), bias),
                               REF["lora_linear"](x, weight, bias, A, B, 16.0), rtol=1e-5, atol=1e-5)


# ---- bound to bitsandbytes -----------------------------------------------------------------------------------
def _bnb():
    return pytest.importorskip("bitsandbytes.functional")


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """bitsandbytes packs two 4-bit codes per byte, the first in the high nibble."""
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)
    return codes[:n]


def test_the_nf4_levels_are_bitsandbytes_nf4_code_table():
    """The table: QLoRA (arXiv 2305.14314) appendix E, as bitsandbytes hardcodes it in get_4bit_type("nf4")
    (made by create_normal_map(offset=0.9677083)); the unit's levels are the dequantised codes 0..15."""
    bnb = _bnb()
    theirs = bnb.get_4bit_type("nf4", device="cpu")
    ours = REF["nf4_dequantize"](torch.arange(16, dtype=torch.uint8), torch.ones(1), blocksize=16)
    assert torch.equal(ours, theirs.float())


@pytest.mark.parametrize("shape,blocksize", [((4, 96), 64), ((3, 50), 64), ((8, 256), 128), ((4, 128), 64),
                                             ((2, 1000), 32)])
def test_nf4_codes_absmax_and_round_trip_are_bitsandbytes_quantize_4bit(shape, blocksize):
    """Codes and absmax: equal. (bitsandbytes multiplies by 1 / absmax where the unit divides, and compares with the
    midpoints of the levels where the unit takes the nearest level: the two can differ only for a value within an
    ulp of a midpoint, which these inputs do not have.) The round trip: equal within rtol 1e-6 (both multiply a
    level by its block's absmax in float32) where a row is a whole number of blocks, as in every weight QLoRA
    quantises: bitsandbytes 0.50.2's CPU `dequantize_4bit` on an AVX-512 machine reads the wrong block's absmax
    past the first row otherwise (measured on a (4, 96) tensor in blocks of 64: flat index 128, in block 2, scaled
    by block 1's absmax; on the AVX2 machine the suite was first calibrated on it did not), while its codes stay
    right. The unit's own round trip is bounded below for every shape."""
    bnb = _bnb()
    g = torch.Generator().manual_seed(blocksize + shape[0])
    x = torch.randn(*shape, generator=g) * torch.logspace(-2, 2, shape[0])[:, None]
    packed, state = bnb.quantize_4bit(x, blocksize=blocksize, compress_statistics=False, quant_type="nf4")
    codes, absmax = REF["nf4_quantize"](x, blocksize=blocksize)
    assert codes.shape == x.shape and codes.dtype == torch.uint8
    assert torch.equal(codes.reshape(-1), _unpack(packed, x.numel()))
    assert torch.equal(absmax, state.absmax)
    ours = REF["nf4_dequantize"](codes, absmax, blocksize=blocksize)
    if shape[-1] % blocksize == 0:
        torch.testing.assert_close(ours, bnb.dequantize_4bit(packed, state), rtol=1e-6, atol=0.0)
    err = (ours - x).abs().reshape(-1)  # and the round trip loses at most half the widest gap between levels
    per_value_absmax = absmax.repeat_interleave(blocksize)[:x.numel()]
    widest_gap = max(b - a for a, b in zip(NF4, NF4[1:]))  # -1 .. -0.696
    assert bool((err <= per_value_absmax * widest_gap / 2 * (1 + 1e-6)).all())


# ---- right, written another way: passes within the stated tolerance ----------------------------------------
def lora_linear_through_the_merged_weight(x, weight, bias, lora_A, lora_B, alpha):
    return F.linear(x, weight + (alpha / lora_A.shape[0]) * lora_B @ lora_A, bias)


def _nf4_levels_from_the_paper():
    """QLoRA's construction with torch's inverse normal CDF: 8 positive and 7 negative quantiles of N(0, 1) and 0,
    scaled to [-1, 1] (offset 0.9677083, bitsandbytes' create_normal_map); within an ulp of the stored table."""
    off = 0.9677083
    pos = torch.special.ndtri(torch.linspace(off, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(off, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (levels / levels.max()).float()


def nf4_quantize_with_levels_from_the_paper(x, blocksize=64):
    return _nearest_on(_nf4_levels_from_the_paper(), x, blocksize)


def nf4_dequantize_with_levels_from_the_paper(codes, absmax, blocksize=64):
    flat = _nf4_levels_from_the_paper()[codes.reshape(-1).long()]
    n = flat.numel()
    blocks = F.pad(flat, (0, (-n) % blocksize)).view(-1, blocksize)
    return (blocks * absmax[:, None]).reshape(-1)[:n].reshape(codes.shape)


@pytest.mark.parametrize("name,right", [("lora_linear", lora_linear_through_the_merged_weight),
                                        ("nf4_quantize", nf4_quantize_with_levels_from_the_paper),
                                        ("nf4_dequantize", nf4_dequantize_with_levels_from_the_paper)],
                         ids=lambda v: getattr(v, "__name__", v))
def test_a_right_unit_written_another_way_passes(name, right):
    assert check.check("w07", name, right) == ("pass", "")
