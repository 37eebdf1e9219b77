"""w13's unit tests are sharp: for each unit a plausible wrong implementation fails its snapshot (the twins); the
simulated layers equal the unsplit layer, and the milestone's tensor-parallel layers are built from the same
split."""
import pytest
import torch
import torch.nn.functional as F

from impl import units
from impl.units import check

REF = units.catalogue("w13")  # the reference units: the bindings below are about them, whatever --impl selects


def column_split_along_the_input_features(x, weight, bias, world=2):
    """Splits W (out, in) by its columns (dim 1), as "column-parallel" reads on paper for Y = X A with A (in, out):
    each rank then needs its slice of the input features, and the rank outputs are concatenated as blocks."""
    parts = [F.linear(x.chunk(world, -1)[r], weight.chunk(world, dim=1)[r]) for r in range(world)]
    y = torch.cat(parts, dim=-1)
    return y if bias is None else y + bias.repeat(world)


def column_parallel_with_the_ranks_reversed(x, weight, bias, world=2):
    parts = [F.linear(x, weight.chunk(world)[r], None if bias is None else bias.chunk(world)[r]) for r in range(world)]
    return torch.cat(parts[::-1], dim=-1)


def row_parallel_with_the_bias_on_every_rank(x, weight, bias, world=2):
    return sum(F.linear(x.chunk(world, -1)[r], weight.chunk(world, dim=1)[r], bias) for r in range(world))


def row_parallel_averaging_the_partials(x, weight, bias, world=2):
    y = sum(F.linear(x.chunk(world, -1)[r], weight.chunk(world, dim=1)[r]) for r in range(world)) / world
    return y if bias is None else y + bias


def bubble_p_over_m(p, m):
    return p / m


def bubble_without_the_fill(p, m):
    return (p - 1) / m


TWINS = [
    ("column_parallel_linear", column_split_along_the_input_features),
    ("column_parallel_linear", column_parallel_with_the_ranks_reversed),
    ("row_parallel_linear", row_parallel_with_the_bias_on_every_rank),
    ("row_parallel_linear", row_parallel_averaging_the_partials),
    ("pipeline_bubble_fraction", bubble_p_over_m),
    ("pipeline_bubble_fraction", bubble_without_the_fill),
]


def test_every_unit_has_a_twin():
    assert {name for name, _ in TWINS} == set(units.catalogue("w13"))


@pytest.mark.parametrize("name,twin", TWINS, ids=[t.__name__ for _, t in TWINS])
def test_a_plausible_wrong_unit_fails_its_snapshot(name, twin):
    status, why = check.check("w13", name, twin)
    assert status != "pass", f"{twin.__name__} passed the {name} snapshot"


def test_the_unsplit_layer_passes_within_the_stated_tolerance():
    """F.linear on the whole W is what both layers must equal: only the order of the float32 additions differs
    (the row-parallel partial sums), which the tolerance (1e-5) allows."""
    for name in ("column_parallel_linear", "row_parallel_linear"):
        assert check.check("w13", name, lambda x, w, b, world=2: F.linear(x, w, b)) == ("pass", "")


@pytest.mark.parametrize("world", [1, 2, 4])
def test_the_simulated_layers_equal_the_unsplit_layer(world):
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(world))
    w, b = torch.randn(24, 16), torch.randn(24)
    full = F.linear(x, w, b)
    assert torch.allclose(REF["column_parallel_linear"](x, w, b, world=world), full, rtol=1e-5, atol=1e-5)
    assert torch.allclose(REF["row_parallel_linear"](x, w, b, world=world), full, rtol=1e-5, atol=1e-5)


def test_the_tensor_parallel_model_is_built_from_the_units_split():
    """tp.py shards the GPT with the split the units are made of (one implementation): a rank's column-parallel
    output is its block of the unit's output, and the rank partials of the row-parallel weight sum to it."""
    from impl.w13_parallel import tp
    from impl.w13_parallel import units as reference

    assert tp.column_shard is reference.column_shard and tp.row_shard is reference.row_shard
    x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))
    fc_w, fc_b = torch.randn(64, 16), torch.randn(64)
    col = REF["column_parallel_linear"](x, fc_w, fc_b)
    for r in range(2):
        name = "blocks.0.mlp.fc"
        mine = F.linear(x, tp.shard(f"{name}.weight", fc_w, r, 2), tp.shard(f"{name}.bias", fc_b, r, 2))
        assert torch.equal(mine, col.chunk(2, -1)[r])
    h = torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(1))
    proj_w, proj_b = torch.randn(16, 64), torch.randn(16)
    partials = [F.linear(h.chunk(2, -1)[r], tp.shard("blocks.0.mlp.proj.weight", proj_w, r, 2)) for r in range(2)]
    assert tp.shard("blocks.0.mlp.proj.bias", proj_b, 1, 2) is proj_b  # replicated, added once after the sum
    assert torch.equal(partials[0] + partials[1] + proj_b,
                       REF["row_parallel_linear"](h, proj_w, proj_b))


def test_the_bubble_the_pipeline_reports_is_the_unit():
    """pp.py's theory column is the unit: the numbers the w13 fast test checks (p = 2, m = 4: 1/5)."""
    import inspect

    from impl.w13_parallel import pp

    assert "w13.pipeline_bubble_fraction(world, p.micro_batches)" in inspect.getsource(pp.pp_process)
    assert REF["pipeline_bubble_fraction"](2, 4) == pytest.approx(1 / 5)
    assert REF["pipeline_bubble_fraction"](1, 8) == 0.0
