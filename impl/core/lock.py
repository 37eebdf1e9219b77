"""The CPU environment's lock: every package of the suite's venv (transitive ones included), exact version and the
sha256 of the archive pip installs it from, one package a line. bootstrap.sh installs exactly this on a machine
without a GPU (`pip install --require-hashes`), so a fresh machine runs the environment CI tested; w21's image lock
(deploy/docker/requirements-cpu.txt) is derived from it.

    python -m impl lock             # regenerate requirements-cpu.lock from this venv (downloads each archive once to hash it)
    python -m impl lock --check     # does this venv run exactly the locked versions? (exit 1 naming each difference)
    python -m impl fetch --check --lock   # is every locked version still served by the registry?
"""
from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from impl.core.errors import MilestonesError

ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = ROOT / "requirements-cpu.lock"
# the suite itself, installed editable from the checkout (pip and setuptools are locked too: the image pins them)
UNLOCKED = {"wheel", "distribute", "llm-milestones"}
HEADER = """\
# The suite's CPU environment, every package with its exact version and sha256: bootstrap.sh installs exactly
# this where there is no GPU (uv pip install --require-hashes --no-deps), so every fresh machine gets what CI tested.
# Regenerate from a venv that works with `python -m impl lock` (then `python -m impl.w21_infra.wheels --lock cpu`
# for the image); tests/test_lock.py fails when this venv and the lock differ.
"""


class LockError(MilestonesError):
    pass


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """Every distribution in this interpreter's environment, normalised name -> version."""
    found = {normalize(d.metadata["Name"]): d.version for d in md.distributions() if d.metadata["Name"]}
    return {k: v for k, v in sorted(found.items()) if k not in UNLOCKED}


def read(path: Path = LOCK_FILE) -> dict[str, str]:
    """name -> version of every pin in the lock."""
    if not path.exists():
        raise LockError(f"{path} is missing: regenerate it with `python -m impl lock`")
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(\s+--hash=sha256:[0-9a-f]{64})+$", line)
        if not m:
            raise LockError(f"{path}:{n}: not `name==version --hash=sha256:...`: {line[:80]}")
        pins[normalize(m.group(1))] = m.group(2)
    return pins


def differences(path: Path = LOCK_FILE) -> list[str]:
    """What differs between the lock and this environment, one line each (empty: they agree)."""
    lock, have = read(path), installed()
    out = [f"{k}: locked {lock[k]}, installed {have[k]}" for k in lock if k in have and have[k] != lock[k]]
    out += [f"{k}: locked {lock[k]}, not installed" for k in lock if k not in have]
    out += [f"{k}: installed {have[k]}, not in the lock" for k in have if k not in lock]
    return out


def write(path: Path = LOCK_FILE) -> Path:
    """The lock from this venv: each archive downloaded once by pip (its find-links included) and hashed."""
    pins = installed()
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "pins.txt"
        reqs.write_text("".join(f"{k}=={v}\n" for k, v in pins.items()))
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, "-r",
                              str(reqs)], capture_output=True, text=True)
        if run.returncode:
            raise LockError(f"pip download of the venv's pins failed: {run.stderr.strip()[-800:]}")
        lines = []
        for k, v in pins.items():
            stem = re.sub(r"[-_.]+", "[-_.]", k)
            files = [f for f in Path(tmp).iterdir()
                     if re.match(rf"(?i)^{stem}-{re.escape(v)}[-.]", f.name)]
            if not files:
                raise LockError(f"no archive of {k}=={v} among the downloads")
            hashes = sorted({_sha256(f) for f in files})
            lines.append(f"{k}=={v} " + " ".join(f"--hash=sha256:{h}" for h in hashes))
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_lock_served(path: Path = LOCK_FILE, parts: int = 4) -> list[dict]:
    """Ask the registry (pip's resolver, metadata only, no cache) whether every locked version is still served; a
    row per version that is not. The pins are asked in `parts` pip queries at once (each waits mostly on the
    index; pip stops at the first version it cannot find, so a query names at most one: fix and ask again)."""
    from concurrent.futures import ThreadPoolExecutor

    pins = sorted(read(path).items())
    groups = [dict(pins[i::parts]) for i in range(parts) if pins[i::parts]]
    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        return [row for rows in pool.map(_ask_pip, groups) for row in rows]


def _ask_pip(pins: dict[str, str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "pins.txt"
        # deepspeed's sdist imports torch to describe itself: it is asked for without build isolation
        reqs.write_text("".join(f"{k}=={v}\n" for k, v in pins.items()))
        run = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                              "--no-cache-dir", "--no-build-isolation", "--quiet", "--report", "-", "-r", str(reqs)],
                             capture_output=True, text=True)
    if run.returncode == 0:
        got = {normalize(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(run.stdout)["install"]}
        return [{"fixture": "lock", "source": f"pip {k} {v}", "status": "NOT SERVED",
                 "detail": f"the index resolves {got.get(k, 'nothing')}"} for k, v in pins.items()
                if normalize(got.get(k, "")) != normalize(v) and got.get(k) != v]
    words = [l.strip() for l in run.stderr.splitlines() if l.strip().startswith("ERROR")]
    return [{"fixture": "lock", "source": "pip (requirements-cpu.lock)", "status": "NOT SERVED",
             "detail": " ".join(words)[-600:] or run.stderr.strip()[-600:]}]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m impl lock", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare this venv with the lock; exit 1 on a difference")
    args = ap.parse_args(argv)
    if args.check:
        diff = differences()
        for d in diff:
            print(f"lock differs: {d}", file=sys.stderr)
        print(f"{LOCK_FILE.name}: {len(read())} pins, {'this venv matches' if not diff else f'{len(diff)} differences'}")
        return 1 if diff else 0
    print(write())
    return 0
