"""Hardware profiles: one YAML per machine class, scaling every milestone's data, model, budget and targets.

    from impl.core.profiles import load_profile
    profile = load_profile("cpu")              # hardware_profiles/cpu.yaml
    profile = load_profile("my/card.yaml")     # a user's own file
    spec = profile.milestone("w01")            # validated W01Spec
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from impl.core.errors import MilestonesError
from impl.core.registry import MILESTONES

PROFILES_DIR = Path(__file__).resolve().parents[2] / "hardware_profiles"


class ProfileError(MilestonesError, ValueError):
    """A profile that cannot be used; the message names the file, the key and what is expected."""


class Requires(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpus: int = 0  # at least this many
    min_gpu_memory_gb: float = 0
    nodes: int = 1
    # the profile's numbers are CPU numbers (fp32, calibrated on CPU threads): refuse to run where torch would
    # put the work on a GPU, whose numbers its targets do not describe
    cpu_only: bool = False


class ProfileFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str
    requires: Requires = Requires()
    gpu_hour_usd: float | None = None  # for cost estimates in reports
    milestones: dict[str, dict[str, Any]]


class Profile:
    def __init__(self, path: Path, data: ProfileFile, specs: dict[str, BaseModel]):
        self.path, self.name, self.description = path, data.name, data.description
        self.requires, self.gpu_hour_usd = data.requires, data.gpu_hour_usd
        self._specs = specs

    def milestones(self) -> list[str]:
        return list(self._specs)

    def milestone(self, milestone_id: str) -> BaseModel:
        if milestone_id not in self._specs:
            raise ProfileError(f"{self.path}: profile {self.name!r} defines no milestone {milestone_id!r}")
        return self._specs[milestone_id]

    def hardware_missing(self) -> str | None:
        """None when this machine satisfies the profile, else why not (used as the skip reason)."""
        req = self.requires
        if req.nodes > 1:
            import os
            nnodes = int(os.environ.get("NNODES", os.environ.get("SLURM_NNODES", "1")))
            if nnodes < req.nodes:
                return f"needs {req.nodes} nodes; this run has {nnodes} (set NNODES under a multi-node launcher)"
        import torch

        if req.cpu_only and torch.cuda.is_available():
            return (f"profile {self.name} measures on the CPU (fp32, CPU-calibrated targets) and this machine shows "
                    f"{torch.cuda.device_count()} CUDA GPU(s), which the code would use: run it with "
                    f"CUDA_VISIBLE_DEVICES= to measure the cpu form here")
        if req.gpus == 0:
            return None

        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        mem = [torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(found)]
        good = sum(m >= req.min_gpu_memory_gb for m in mem)
        if good < req.gpus:
            seen = "none" if not found else ", ".join(f"{m:.0f} GB" for m in mem)
            return f"needs {req.gpus} GPU(s) with >= {req.min_gpu_memory_gb:g} GB; found {seen}"
        return None


def _format_errors(path: Path, err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(e["loc"]))
        got = e.get("input")
        got = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        lines.append(f"{path}: key '{key}': {e['msg']}{got}")
    return "\n".join(lines)


def resolve_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ProfileError(f"profile file {p} does not exist")
        return p
    candidate = PROFILES_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(x.stem for x in PROFILES_DIR.glob("*.yaml")))
        raise ProfileError(f"unknown profile {str(name_or_path)!r}; known: {known} (or pass a path to a YAML file)")
    return candidate


def read_yaml(path: Path, error: type[Exception]):
    """A YAML file's content; broken YAML raises `error` naming the line and column."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None


def load_profile(name_or_path: str | Path) -> Profile:
    path = resolve_path(name_or_path)
    raw = read_yaml(path, ProfileError)
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping with keys name, description, requires, milestones")
    try:
        data = ProfileFile.model_validate(raw)
    except ValidationError as e:
        raise ProfileError(_format_errors(path, e)) from None
    specs = {}
    for mid, body in data.milestones.items():
        if mid not in MILESTONES:
            raise ProfileError(f"{path}: key 'milestones.{mid}': unknown milestone; known: {', '.join(MILESTONES)}")
        ms = MILESTONES[mid]
        if not ms.implemented:
            raise ProfileError(f"{path}: key 'milestones.{mid}': milestone {mid} is not implemented yet")
        try:
            specs[mid] = ms.spec_model().model_validate(body)
        except ValidationError as e:
            raise ProfileError(_format_errors(path, e, prefix=f"milestones.{mid}")) from None
    return Profile(path, data, specs)


def override(spec: BaseModel, **sections: dict) -> BaseModel:
    """A validated copy of a milestone spec with some fields replaced; nested mappings merge:
    override(spec, train={"lr": 0.0}), override(spec, clm={"train": {"lr": 0.0}, "block_size": 32})."""
    d = spec.model_dump()
    deep_merge(d, sections)
    return type(spec).model_validate(d)


SEED_FIELDS = ("seed", "sample_seed")  # sample_seed: which items an evaluation samples (w15)


def reseeded(node, seed: int, drop: tuple[str, ...] = ()):
    """A copy of a spec's plain data with every integer seed field (SEED_FIELDS) set to `seed` and the keys in
    `drop` left out."""
    if isinstance(node, dict):
        return {k: (seed if k in SEED_FIELDS and isinstance(v, int) else reseeded(v, seed, drop))
                for k, v in node.items() if k not in drop}
    if isinstance(node, list):
        return [reseeded(v, seed, drop) for v in node]
    return node


def with_seed(spec: BaseModel, seed: int) -> BaseModel:
    """A validated copy of a milestone spec with every `seed` field (train, stories, parity ...) set to `seed`."""
    return type(spec).model_validate(reseeded(spec.model_dump(), seed))


def deep_merge(into: dict, fields: dict) -> None:
    """Write `fields` into `into`; where both hold a mapping at the same key, merge it key by key."""
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
