"""Fixed, seeded inputs for every unit, one module per milestone (impl/units/cases/wNN.py), and what each unit
returns (or changes in place) on them. The snapshots in tests/units/snapshots/ are the reference units' outputs
on these cases (`python -m impl units --update-snapshots`); a learner's unit passes when its outputs match them
within the unit's tolerance. Each case is built so that a plausible mistake shows.

    @case("w01.softmax")
    def _(fn):                      # fn: the unit under test
        x = randn(3, 4, 6, scale=3.0)
        return {"last": fn(x, dim=-1)}   # name -> a tensor, array or number to compare
"""
from __future__ import annotations

import importlib

import torch

CASES: dict[str, callable] = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


def cases_for(milestone: str) -> dict[str, callable]:
    """The milestone's cases, "<milestone>.<unit>" -> case (its module imported on first use)."""
    importlib.import_module(f"impl.units.cases.{milestone}")
    return {k: v for k, v in CASES.items() if k.split(".", 1)[0] == milestone}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed)) * scale
