"""Each unit against its snapshot: the check the unit tests run and `python -m impl units` prints.

    python -m impl units [--impl DIR [--impl-fallback]] [-m w01]   # a table per milestone: pass / fail / not implemented
    python -m impl units --update-snapshots                         # the reference's outputs become the snapshots
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from impl import units
from impl.units.cases import cases_for

SNAPSHOTS = Path(__file__).resolve().parents[2] / "tests" / "units" / "snapshots"


def _arrays(outputs: dict) -> dict[str, np.ndarray]:
    out = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().double().numpy()
        out[key] = np.asarray(value, dtype=np.float64)
    return out


def snapshot_path(milestone: str) -> Path:
    return SNAPSHOTS / f"{milestone}.npz"


def update_snapshots(milestone: str) -> Path:
    """The reference units' outputs on the cases, written as the milestone's snapshot."""
    arrays = {}
    for name, fn in units.catalogue(milestone).items():
        for key, value in _arrays(cases_for(milestone)[f"{milestone}.{name}"](fn)).items():
            arrays[f"{name}/{key}"] = value
    SNAPSHOTS.mkdir(parents=True, exist_ok=True)
    path = snapshot_path(milestone)
    np.savez_compressed(path, **arrays)
    return path


def load_snapshot(milestone: str) -> dict[str, np.ndarray]:
    path = snapshot_path(milestone)
    if not path.exists():
        raise units.UnitError(f"no snapshot {path}: python -m impl units --update-snapshots")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def check(milestone: str, name: str, fn) -> tuple[str, str]:
    """("pass" | "fail" | "error", why) for `fn` as the unit `name` of `milestone`."""
    tol = units.catalogue(milestone)[name].__unit_tolerance__
    expected = {k.split("/", 1)[1]: v for k, v in load_snapshot(milestone).items() if k.split("/", 1)[0] == name}
    try:
        got = _arrays(cases_for(milestone)[f"{milestone}.{name}"](fn))
    except NotImplementedError:
        return "error", "not implemented"
    except Exception as e:  # a learner's unit that raises: reported, never a traceback maze
        return "error", f"{type(e).__name__}: {e}"[:300]
    for key, want in expected.items():
        have = got.get(key)
        if have is None or have.shape != want.shape:
            return "fail", f"{key}: shape {None if have is None else have.shape}, expected {want.shape}"
        if not np.allclose(have, want, rtol=tol.rtol, atol=tol.atol, equal_nan=False):
            worst = float(np.nanmax(np.abs(have - want))) if np.isfinite(have).all() else float("nan")
            return "fail", f"{key}: max |difference| {worst:.3g} (rtol {tol.rtol:g}, atol {tol.atol:g})"
    return "pass", ""


def table(milestones: tuple[str, ...]) -> tuple[list[str], bool]:
    """The lines `python -m impl units` prints, and whether every unit passed."""
    lines, ok = [], True
    for m in milestones:
        whose = units.whose(m)
        lines.append(f"{m}: {units.summary(units.provenance((m,)))}")
        for name in units.catalogue(m):
            if whose[name] == "missing":
                status, why = "not implemented", ""
            else:
                status, why = check(m, name, getattr(units.UnitSet(m), name))
            ok &= status == "pass"
            lines.append(f"  {name:28} {status.upper():16} {whose[name]:10} {why}")
    return lines, ok
