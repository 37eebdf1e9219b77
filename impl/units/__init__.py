"""The units the curriculum teaches, each one small function a learner can write and test alone (the way Stanford
CS336's tests/adapters.py works), and the switch that puts a learner's versions into the suite.

    from impl.units import w01
    w01.causal_attention(q, k, v)          # the learner's, when one is selected and written; else the reference

    python -m impl learner init my_impl    # a package with every unit as a stub to fill in
    python -m impl units --impl my_impl    # each unit against its snapshot: pass / fail / not implemented
    pytest tests/units --impl my_impl      # the same as tests
    pytest acceptance -m "w01 and cpu" --impl my_impl --impl-fallback   # the milestone built on the learner's units

The reference implementation of each unit is the project's own: impl/<milestone>/units.py, which the milestone's
code calls through this module, so the model, the optimizer and the schedule that train in the acceptance checks
are the learner's as soon as the learner's package is selected. Selection: `--impl DIR` (pytest, the CLI) or
LLMM_IMPL=DIR (inherited by every process a check launches); a unit the package leaves as a stub raises an error
naming it, unless `--impl-fallback` / LLMM_IMPL_FALLBACK=1 asks for the reference in its place. Every scorecard
row says whose code it measured (`provenance`).
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from impl.core.errors import MilestonesError

IMPL = Path(__file__).resolve().parents[1]
# the milestones that have units: impl/<milestone>_*/units.py
MILESTONES = tuple(sorted(p.parent.name.split("_")[0] for p in IMPL.glob("w[0-9][0-9]_*/units.py")))
LEARNER_MODULE = "llmm_learner"


class UnitError(MilestonesError):
    pass


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


def unit(rtol: float = 1e-5, atol: float = 1e-6):
    """Marks a reference function as a unit, with the tolerance its snapshot test allows."""
    def mark(fn):
        fn.__unit_tolerance__ = Tolerance(rtol, atol)
        return fn
    return mark


def reference_module(milestone: str):
    return importlib.import_module(f"impl.{_package(milestone)}.units")


def _package(milestone: str) -> str:
    for p in IMPL.glob(f"{milestone}_*/units.py"):
        return p.parent.name
    raise UnitError(f"no units for {milestone!r} (units exist for {', '.join(MILESTONES)})")


@functools.lru_cache(maxsize=None)
def catalogue(milestone: str) -> dict:
    """name -> the reference function, in the order the module defines them."""
    mod = reference_module(milestone)
    found = [(n, f) for n, f in vars(mod).items() if callable(f) and hasattr(f, "__unit_tolerance__")]
    return dict(sorted(found, key=lambda nf: inspect.getsourcelines(nf[1])[1]))


# ---- the learner's package ------------------------------------------------------------------------------------
def selected() -> Path | None:
    path = os.environ.get("LLMM_IMPL")
    return Path(path).resolve() if path else None


def fallback() -> bool:
    return os.environ.get("LLMM_IMPL_FALLBACK", "") not in ("", "0")


def select(path: str | Path | None, allow_fallback: bool = False) -> None:
    """Use the learner's package at `path` (None: the reference) here and in every process started from here."""
    if path is None:
        os.environ.pop("LLMM_IMPL", None)
    else:
        p = Path(path).resolve()
        if not (p / "__init__.py").exists():
            raise UnitError(f"{p} is not a learner's package (no __init__.py): make one with "
                            f"`python -m impl learner init {path}`")
        os.environ["LLMM_IMPL"] = str(p)
    os.environ["LLMM_IMPL_FALLBACK"] = "1" if allow_fallback else "0"
    _learner_module.cache_clear()
    _resolve.cache_clear()


@functools.lru_cache(maxsize=None)
def _learner_module(root: str, milestone: str):
    name = f"{LEARNER_MODULE}.{milestone}"
    if LEARNER_MODULE not in sys.modules or getattr(sys.modules[LEARNER_MODULE], "__llmm_root__", None) != root:
        for m in [m for m in sys.modules if m == LEARNER_MODULE or m.startswith(LEARNER_MODULE + ".")]:
            del sys.modules[m]
        spec = importlib.util.spec_from_file_location(LEARNER_MODULE, Path(root) / "__init__.py",
                                                      submodule_search_locations=[root])
        pkg = importlib.util.module_from_spec(spec)
        pkg.__llmm_root__ = root
        sys.modules[LEARNER_MODULE] = pkg
        spec.loader.exec_module(pkg)
    if not (Path(root) / f"{milestone}.py").exists():
        return None
    try:
        return importlib.import_module(name)
    except Exception as e:  # a learner's syntax error or import error: one clear line, not a traceback maze
        raise UnitError(f"the learner's {Path(root) / (milestone + '.py')} does not import: "
                        f"{type(e).__name__}: {e}") from e


def is_stub(fn) -> bool:
    """A function whose body is only a docstring and `raise NotImplementedError` (what `learner init` writes)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.FunctionDef) else []
    body = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc.func if isinstance(body[0].exc, ast.Call) else body[0].exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


def whose(milestone: str) -> dict[str, str]:
    """unit -> "learner" (written in the selected package), "reference" (no package, or fallback for a stub) or
    "missing" (a stub or absent, without fallback)."""
    root = selected()
    names = catalogue(milestone)
    if root is None:
        return {n: "reference" for n in names}
    mod = _learner_module(str(root), milestone)
    out = {}
    for n in names:
        fn = getattr(mod, n, None) if mod else None
        written = fn is not None and not is_stub(fn)
        out[n] = "learner" if written else ("reference" if fallback() else "missing")
    return out


class UnitSet:
    """A milestone's units as attributes: the learner's version where it is written, else per the fallback rule."""

    def __init__(self, milestone: str):
        self._milestone = milestone

    def __getattr__(self, name: str):
        # called on every use (a model's forward calls several units per layer): resolved once per selection
        return _resolve(self._milestone, name, os.environ.get("LLMM_IMPL"), fallback())


@functools.lru_cache(maxsize=None)
def _resolve(milestone: str, name: str, root: str | None, allow_fallback: bool):
    names = catalogue(milestone)
    if name not in names:
        raise AttributeError(f"{milestone} has no unit {name!r} (units: {', '.join(names)})")
    if root is None:
        return names[name]
    mod = _learner_module(str(Path(root).resolve()), milestone)
    fn = getattr(mod, name, None) if mod else None
    if fn is not None and not is_stub(fn):
        return fn
    if allow_fallback:
        return names[name]
    raise UnitError(f"unit {milestone}.{name} is not implemented in {root} (write it, or run with "
                    f"--impl-fallback / LLMM_IMPL_FALLBACK=1 to use the reference for the units not written yet)")


_unit_sets: dict[str, UnitSet] = {}


def __getattr__(name: str) -> UnitSet:
    """`from impl.units import w17` gives w17's UnitSet (PEP 562), for every milestone with units."""
    if name in MILESTONES:
        return _unit_sets.setdefault(name, UnitSet(name))
    raise AttributeError(f"module impl.units has no attribute {name!r}")


# ---- provenance: whose code a row measured --------------------------------------------------------------------
def provenance(milestones: tuple[str, ...] = MILESTONES) -> dict:
    """What a scorecard row records: the implementation (the reference, or the learner's package with its git
    commit and whether it has uncommitted changes) and, per unit of the given milestones, whose version ran."""
    root = selected()
    units = {f"{m}.{n}": w for m in milestones if m in MILESTONES for n, w in whose(m).items()}
    if root is None:
        return {"implementation": "reference", "units": units}
    return {"implementation": str(root), **_git_state(root), "fallback": fallback(), "units": units}


def _git_state(root: Path) -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    head = git("rev-parse", "--short", "HEAD")
    if head.returncode:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(git("status", "--porcelain", "--", ".").stdout.strip())}


def summary(prov: dict) -> str:
    """One line for the scorecard: 'reference' or 'my_impl@abc123 (dirty): 3 of 9 units the learner's'."""
    if prov.get("implementation", "reference") == "reference":
        return "reference implementation"
    units = prov.get("units", {})
    mine = sum(1 for w in units.values() if w == "learner")
    commit = f"@{prov['commit']}" + (" (uncommitted changes)" if prov.get("dirty") else "") if prov.get("commit") \
        else " (not a git repository)"
    return f"learner's package {prov['implementation']}{commit}: {mine} of {len(units)} units the learner's"
