"""Calibrate a milestone's targets for a machine: run its acceptance checks once per seed, then suggest each
threshold by the suite's one rule and print the YAML block to paste into the profile.

    python -m impl calibrate w01 --profile cpu --seeds 0,1,2
    python -m impl calibrate w03 --profile my/box.yaml --seeds 0,1,2,3,4 --reuse-artifacts

Each seed is one `pytest acceptance -m "<milestone> and <profile>"` run on a copy of the profile whose every
`seed` field in the milestone's section is set to that seed, with its own reports directory: the numbers are the
checks' own, measured the way the acceptance suite measures them.

The rule (README, "Calibrating a profile"):
  * a target that must beat a no-skill point -- a baseline measured in the same run (difference: 0, ratio: 1) --
    keeps two thirds of the worst seed's margin over it: threshold = worst + (no_skill - worst) / 3;
  * any other target sits `headroom` (default 1.1: 10% for machine-to-machine drift) beyond the worst seed, away
    from its no-skill point (0 for an absolute value; 1 for a ratio that may only stay close to its baseline);
  * the suggestion's distance from the no-skill point is rounded to two significant digits, and an absolute target whose check records a trivial
    reference (`trivial ...`, e.g. the unigram model) must beat it, or no threshold is suggested.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import yaml

from impl.core.errors import MilestonesError
from impl.core.profiles import load_profile, reseeded, resolve_path
from impl.core.targets import Target

DEFAULT_HEADROOM = 1.1
ROOT_DIR = Path(__file__).resolve().parents[2]


def no_skill(target: Target) -> float:
    """The value a run that learned nothing scores against its baselines (an absolute target: 0, unless the
    target names its own)."""
    if target.no_skill is not None:
        return target.no_skill
    return 1.0 if target.baselines and target.compare == "ratio" else 0.0


def _round2(x: float) -> float:
    return float(f"{x:.2g}") if x else 0.0


def suggest(target: Target, values: list[float], trivial: dict[str, float] | None = None) -> tuple[float | None, str]:
    """(suggested threshold or None, the rule as applied, in words)."""
    if not values or any(v != v for v in values):
        return None, "a seed produced no value (NaN): no threshold"
    worst = target.worst(values)
    z = no_skill(target)
    beats = worst < z if target.direction == "lower" else worst > z
    if (target.baselines or target.no_skill is not None) and beats:
        raw = worst + (z - worst) / 3
        rule = f"two thirds of the worst seed's margin over {z:g} (no skill): {worst:.4g} -> {raw:.4g}"
    else:
        h = target.headroom or DEFAULT_HEADROOM
        away = (lambda v: z + (v - z) * h) if target.direction == "lower" else (lambda v: z + (v - z) / h)
        raw = away(worst)
        rule = f"the worst seed {worst:.4g} with headroom {h:g} beyond it: {raw:.4g}"
    def worst_passes(t: float) -> bool:
        return target.model_copy(update={"threshold": t}).passes(worst)

    threshold = z + _round2(raw - z)  # two significant digits of the distance from the no-skill point
    if not worst_passes(threshold):
        threshold = raw  # rounding must not cut into the worst seed
    if not worst_passes(threshold):
        # the worst seed lies on the far side of the no-skill point (a ratio below 1 that must be higher): moving
        # "away" from that point moves toward the seed, and any threshold the rule gives fails a calibration seed
        return None, (f"{rule}; the worst seed {worst:.4g} does not reach the no-skill point {z:g}, so the rule "
                      f"gives no threshold every seed passes: no threshold")
    # a trivial reference is an absolute value (the unigram model's ppl, chance accuracy); a target measured against
    # a baseline is a margin or ratio whose no-skill point already stands for it
    for name, ref in ({} if target.baselines else trivial or {}).items():
        if not (threshold < ref if target.direction == "lower" else threshold > ref):
            return None, f"{rule}; it does not beat the trivial {name} ({ref:.4g}): no threshold"
        low, high = sorted((ref, threshold))
        rule += (f"; beats the trivial {name} ({ref:.4g}) by a factor of {high / low:.3g}" if low > 0 else
                 f"; beats the trivial {name} ({ref:.4g}) by {high - low:.3g}")
    return threshold, rule


def upstream(section, found: set[str] | None = None) -> set[str]:
    """The milestones whose runs a milestone's section receives ("w07:lora", "w01" as a value)."""
    found = set() if found is None else found
    if isinstance(section, dict):
        for v in section.values():
            upstream(v, found)
    elif isinstance(section, list):
        for v in section:
            upstream(v, found)
    elif isinstance(section, str) and re.fullmatch(r"w\d\d(:\w+)?", section):
        found.add(section[:3])
    return found


def seeded_profile(raw: dict, milestone: str, seed: int) -> dict:
    """A copy of a profile's YAML with every `seed` of the milestone -- and of each milestone whose run it
    receives (w09 measures w07's model: a seed of w09 is a seed of that training) -- set to `seed`, and no
    target's `seeds`."""
    milestones = dict(raw["milestones"])
    for name in {milestone} | (upstream(milestones[milestone]) & set(milestones)):
        milestones[name] = reseeded(milestones[name], seed, drop=("seeds",) if name == milestone else ())
    return {**raw, "milestones": milestones}


def run_seed(profile_path: Path, milestone: str, seed: int, work: Path, reuse: bool) -> list[dict]:
    """The acceptance checks of one milestone under the seeded profile; their scorecard rows."""
    raw = yaml.safe_load(profile_path.read_text())
    seeded = work / f"seed{seed}" / profile_path.name
    seeded.parent.mkdir(parents=True, exist_ok=True)
    seeded.write_text(yaml.safe_dump(seeded_profile(raw, milestone, seed), sort_keys=False))
    reports = seeded.parent / "reports"
    cmd = [sys.executable, "-m", "pytest", str(ROOT_DIR / "acceptance"), "--profile", str(seeded), "-m",
           f"{milestone} and {raw['name']}", "--reports-dir", str(reports), "-q", "-p", "no:cacheprovider",
           *(["--reuse-artifacts"] if reuse else [])]
    log = seeded.parent / "pytest.log"
    with open(log, "w") as out:
        rc = subprocess.run(cmd, cwd=ROOT_DIR, stdout=out, stderr=subprocess.STDOUT).returncode
    card = reports / "scorecard.json"
    if not card.exists():
        raise MilestonesError(f"seed {seed}: pytest exited {rc} without a scorecard; its output:\n"
                              f"{log.read_text()[-3000:]}")
    return [r for r in json.loads(card.read_text())["rows"] if r["milestone"] == milestone and r["profile"] == raw["name"]]


def calibrate(milestone: str, profile: str, seeds: list[int], reuse: bool = False, progress: bool = True,
              work: Path | None = None) -> str:
    """Run every seed, then the report: per target each seed's value and baselines, spread, rule, YAML block."""
    from tqdm import tqdm

    prof = load_profile(profile)
    spec = prof.milestone(milestone)
    path = resolve_path(profile)
    work = work or Path(tempfile.mkdtemp(prefix=f"calibrate-{milestone}-"))
    by_check: dict[str, dict[int, dict]] = {}
    for seed in tqdm(seeds, desc=f"calibrate {milestone} [{prof.name}]", unit="seed", disable=not progress):
        for row in run_seed(path, milestone, seed, work, reuse):
            by_check.setdefault(row["check"], {})[seed] = row
    if not by_check:
        raise MilestonesError(f"no acceptance check of {milestone} ran under {path}")
    lines = [f"# python -m impl calibrate {milestone} --profile {profile} --seeds {','.join(map(str, seeds))}",
             f"# work directory (seeded profiles, pytest logs, reports): {work}", ""]
    for check, rows in by_check.items():
        any_row = next(iter(rows.values()))
        name = next(t for t in spec.targets if spec.targets[t].label(t) == any_row["metric"])
        target = spec.targets[name]
        lines.append(f"## {name} ({check}): {any_row['metric']}, {target.direction} is better")
        values, trivial = [], {}
        for seed, r in rows.items():
            extra = r.get("extra") or {}
            refs = {k: v for k, v in extra.items() if k.startswith(("baseline ", "trivial "))}
            shown = ", ".join(f"{k} {v:.4g}" for k, v in refs.items() if isinstance(v, (int, float)))
            value = r["value"] if isinstance(r["value"], (int, float)) else math.nan
            lines.append(f"  seed {seed}: {value:.4g} [{r['status']}]" + (f"  ({shown})" if shown else "")
                         + (f"  -- {r['message'][:200]}" if r["status"] == "error" and r.get("message") else ""))
            values.append(value)
            strongest = max if target.direction == "higher" else min
            for k, v in refs.items():
                if k.startswith("trivial ") and isinstance(v, (int, float)):
                    trivial[k[8:]] = strongest(trivial.get(k[8:], v), v)
        finite = [v for v in values if v == v]
        if finite:
            lines.append(f"  spread {max(finite) - min(finite):.4g}, worst {target.worst(values):.4g}")
        threshold, rule = suggest(target, values, trivial)
        lines.append(f"  rule: {rule}")
        lines += ["", yaml_block(name, target, threshold, rows, rule, milestone, profile, seeds), ""]
    return "\n".join(lines)


def yaml_block(name: str, target: Target, threshold: float | None, rows: dict[int, dict], rule: str, milestone: str,
               profile: str, seeds: list[int]) -> str:
    """The target as it would stand in the profile, with the calibration comment."""
    values = " / ".join(f"{r['value']:.4g}" if isinstance(r["value"], (int, float)) else "n/a" for r in rows.values())
    env = next(iter(rows.values()))
    comment = (f"calibration (python -m impl calibrate {milestone} --profile {profile} --seeds "
               f"{','.join(map(str, seeds))}; {env.get('hardware')}, torch {env.get('versions', {}).get('torch')}, "
               f"commit {env.get('commit')}): seeds {'/'.join(map(str, rows))}: {values}. Rule: {rule}.")
    body = {"direction": target.direction}
    if target.baselines:
        body["baselines"] = target.baselines
        body["compare"] = target.compare
    if target.seeds:
        body["seeds"] = target.seeds
    if target.headroom:
        body["headroom"] = target.headroom
    body["threshold"] = threshold if threshold is not None else "null  # no threshold: see the rule"
    body["protocol"] = target.protocol
    wrapped = textwrap.wrap(comment, 104)
    out = [f"{name}:", f"  direction: {body.pop('direction')}"]
    out += [f"  # {line}" for line in wrapped]
    for k, v in body.items():
        out.append(f"  {k}: {json.dumps(v) if isinstance(v, (list, str)) and k != 'threshold' else v}")
    return "\n".join(out)


def main_args(milestone: str, profile: str, seeds: str, reuse: bool) -> int:
    try:
        parsed = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise MilestonesError(f"--seeds takes integers separated by commas, e.g. 0,1,2; got {seeds!r}") from None
    if not parsed:
        raise MilestonesError("--seeds names no seed")
    print(calibrate(milestone, profile, parsed, reuse))
    return 0
