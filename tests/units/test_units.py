"""Every unit against its snapshot, through `impl.units` (the reference, or a learner's package with --impl):
one test per unit, so a learner who wrote one piece runs one test and gets a verdict on that piece.

    pytest tests/units                                  # the reference: all pass
    pytest tests/units -k causal_attention --impl DIR   # one of the learner's units

Tolerances are the units' own (impl/w01_gpt/units.py, `@unit(rtol, atol)`): 1e-6 relative where the arithmetic is
exactly a reference's, 1e-4 where a learner's different order of float32 operations (attention from matmuls
instead of torch's fused kernel) moves the last digits."""
import pytest

from impl import units
from impl.units import check

UNITS = [(m, name) for m in units.MILESTONES for name in units.catalogue(m)]


@pytest.mark.parametrize("milestone,name", UNITS, ids=[f"{m}.{n}" for m, n in UNITS])
def test_unit_matches_its_snapshot(milestone, name):
    fn = getattr(units.UnitSet(milestone), name)  # a stub without --impl-fallback: one error naming the unit
    status, why = check.check(milestone, name, fn)
    assert status == "pass", f"{milestone}.{name}: {status}: {why}"


def test_every_unit_has_a_case_and_a_snapshot_and_nothing_else_does():
    assert units.MILESTONES and "w01" in units.MILESTONES
    for m in units.MILESTONES:
        stored = {k.split("/", 1)[0] for k in check.load_snapshot(m)}
        assert stored == set(units.catalogue(m)), m
        assert set(check.cases_for(m)) == {f"{m}.{n}" for n in units.catalogue(m)}, m
