"""Run directories `artifacts/<milestone>/<profile>/<config-hash>-<n>/` and the files every run leaves there.

A run writes config.json first, checkpoints while it trains, and metrics.json last: a run directory with
metrics.json is complete. `find_run` reuses a complete run of the same config (when asked), resumes an
incomplete one that has a checkpoint, or makes a new one. A `Runs(share=True)` also reuses a complete run of the same
config that this process made under another root or profile: a sabotage twin reuses the stages its acceptance check
trained moments before on the same pytest-xdist worker, never a stale run left on disk by older code.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from impl.core.errors import MilestonesError

ROOT = Path(__file__).resolve().parents[2]


class CheckpointError(MilestonesError):
    pass


def artifacts_root() -> Path:
    return Path(os.environ.get("LLM_MILESTONES_ARTIFACTS", ROOT / "artifacts"))


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def write_json(path: Path, obj) -> None:
    """Atomic: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


_MADE_HERE: dict[tuple[str, str], list[Path]] = {}  # (milestone[/stage], config hash) -> runs this process made


def _same_config(run: Path, config: dict) -> bool:
    return (run / "config.json").exists() and json.loads((run / "config.json").read_text()) == config


def find_run(milestone: str, profile: str, config: dict, reuse: bool, root: Path | None = None,
             share: bool = False) -> Path:
    base = (root or artifacts_root()) / milestone / profile
    h = config_hash(config)
    made_here = _MADE_HERE.setdefault((milestone, h), [])
    if share:
        for run in reversed(made_here):
            if (run / "metrics.json").exists() and _same_config(run, config):
                return run
    runs = sorted(base.glob(f"{h}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    for run in reversed(runs):
        if not _same_config(run, config):
            continue
        if (run / "metrics.json").exists():
            if reuse:
                return run
        elif (run / "checkpoint.pt").exists():
            made_here.append(run)
            return run  # an interrupted run: resume it
    n = int(runs[-1].name.rsplit("-", 1)[1]) + 1 if runs else 0
    while True:  # another process may take the same number first: take the next one
        run = base / f"{h}-{n}"
        try:
            run.mkdir(parents=True)
            break
        except FileExistsError:
            n += 1
    write_json(run / "config.json", config)
    made_here.append(run)
    return run


def environment() -> dict:
    import torch

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "commit": git_commit(),
    }
    for pkg in ("transformers", "datasets", "tokenizers"):
        try:
            env[pkg] = __import__(pkg).__version__
        except ImportError:
            pass
    return env


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{sha}{'-dirty' if dirty else ''}" if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Runs:
    """Where the runs of one milestone under one profile live; `dir_for(config)` picks the run directory."""
    milestone: str
    profile: str
    reuse: bool = False
    root: Path | None = None
    share: bool = False  # also reuse a complete run of the same config made by this process elsewhere (see above)

    def dir_for(self, config: dict, name: str = "") -> Path:
        return find_run(self.milestone + (f"/{name}" if name else ""), self.profile, config, self.reuse, self.root,
                        self.share)

    def reusing(self) -> Runs:
        """These runs with every complete run reused: for a stage that is a pure function of its config (an index,
        a tokenizer, a cleaned corpus)."""
        return replace(self, reuse=True)

    @contextmanager
    def exclusive(self):
        """Held while a run is found and trained, so that a second process wanting the same milestone's run (w15
        reusing w01's and w07's under pytest-xdist) waits for it and then reuses it instead of training a copy."""
        locks = (self.root or artifacts_root()) / ".locks"  # not among the run directories, which users list
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{self.milestone.replace('/', '-')}--{self.profile}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    reused: bool = False
    extra: dict = field(default_factory=dict)

    def train_log(self) -> list[dict]:
        path = self.run_dir / "train_log.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
