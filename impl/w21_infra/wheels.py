"""The wheels the w21 images install: the image's lock, pinned from the suite's environment lock, downloaded
once with the host's pip (its find-links and local indexes: torch comes from /opt/wheels, not from the network;
deepspeed, an sdist, built with `pip wheel`, which reuses the wheel bootstrap.sh built) into
$LLM_MILESTONES_CACHE/w21-wheels/<lock hash>/, which every build context hard-links.

    python -m impl.w21_infra.wheels --lock cpu         # regenerate deploy/docker/requirements-cpu.txt from the venv

Downloading them needs a package registry (~260 MB, once); pip gives up on a silent connection after
PIP_TIMEOUT_S seconds instead of hanging.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from impl.core.fixtures import cache_dir
from impl.w21_infra.daemon import DockerError, file_lock, tail

DOCKER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "docker"
PIP_TIMEOUT_S = 30
# what the image installs (with everything they require, pinned in deploy/docker/requirements-<flavor>.txt): what
# `python -m impl train w01` imports, not the whole suite's dependencies (w03-w15's libraries)
# (starlette: `python -m impl` reads the w09 server's docstring for its help, and that module imports it;
# deepspeed: the worker the cluster manifests run, impl/w21_infra/worker.py)
IMAGE_PACKAGES = ["torch", "transformers", "tokenizers", "safetensors", "numpy", "pyyaml", "pydantic", "tqdm",
                  "starlette", "deepspeed", "pip"]
# packages PyPI has only as an sdist: built once with the host's pip (`pip wheel`, reusing the wheel bootstrap.sh
# built, whose shared-memory collective is compiled against this same torch) instead of downloaded
SDIST_BUILDS = {"deepspeed": {"DS_BUILD_SHM_COMM": "1", "DS_ACCELERATOR": "cpu"}}


def host_lock(packages: list[str]) -> list[str]:
    """Exact pins of `packages` and everything they need (as this venv's metadata says), at the versions of the
    suite's environment lock (requirements-cpu.lock): the image runs what the suite was tested with."""
    import importlib.metadata as md
    from packaging.requirements import Requirement

    from impl.core.lock import read as read_env_lock

    seen: dict[str, str] = {}
    stack = list(packages)
    while stack:
        name = stack.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        dist = md.distribution(name)
        seen[key] = dist.version
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    env_lock = read_env_lock()
    unlocked = sorted(k for k in seen if k not in env_lock)
    if unlocked:
        raise DockerError(f"{', '.join(unlocked)}: not in requirements-cpu.lock; regenerate it (python -m impl lock)")
    return [f"{k}=={env_lock[k]}" for k in sorted(seen)]


def read_lock(path: Path) -> list[str]:
    return [l.split("#")[0].strip() for l in path.read_text().splitlines() if l.split("#")[0].strip()]


def wheels_for(lock_file: Path) -> Path:
    """The lock's wheels, downloaded once with the host's pip into the cache; reused by every build."""
    pins = read_lock(lock_file)
    out = cache_dir() / "w21-wheels" / hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]
    with file_lock("wheels"):
        remove_abandoned_downloads(out.parent)
        if (out / "COMPLETE").exists():
            return out
        tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        binary = [p for p in pins if p.split("==")[0] not in SDIST_BUILDS]
        jobs = [("download", [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                              "--timeout", str(PIP_TIMEOUT_S), "--quiet", "-d", str(tmp), *binary], os.environ)]
        for p in pins:
            name = p.split("==")[0]
            if name in SDIST_BUILDS:
                jobs.append((f"wheel {p}", [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                            "--timeout", str(PIP_TIMEOUT_S), "--quiet", "-w", str(tmp), p],
                             {**os.environ, **SDIST_BUILDS[name]}))
        for what, cmd, env in jobs:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
            if p.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise DockerError(f"pip {what} of the image's wheels ({lock_file.name}) failed: {tail(p.stderr, 10)}")
        (tmp / "COMPLETE").write_text("\n".join(pins) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        for old in out.parent.iterdir():  # an earlier lock's wheels (~250 MB each): the lock changed, drop them
            if old != out and (old / "COMPLETE").exists():
                shutil.rmtree(old, ignore_errors=True)
    return out


def remove_abandoned_downloads(wheels_dir: Path) -> list[Path]:
    """`<hash>.<pid>.tmp` directories whose process is gone (killed mid-download: up to ~250 MB each)."""
    gone = []
    for tmp in wheels_dir.glob("*.*.tmp") if wheels_dir.is_dir() else []:
        pid = tmp.name.split(".")[-2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            gone.append(tmp)
    return gone


def write_lock(flavor: str = "cpu") -> Path:
    """Regenerate deploy/docker/requirements-<flavor>.txt from this venv, keeping its comment header."""
    path = DOCKER_DIR / f"requirements-{flavor}.txt"
    head = [l for l in path.read_text().splitlines() if l.startswith("#")] if path.exists() else []
    pins = host_lock(IMAGE_PACKAGES)
    if flavor == "cuda":  # the CUDA build of the same torch: the index resolves its pinned nvidia-* wheels
        pins = [p.split("+")[0] if p.startswith("torch==") else p for p in pins]
    path.write_text("\n".join(head + pins) + "\n")
    return path


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="regenerate an image's lock from this venv")
    ap.add_argument("--lock", choices=["cpu", "cuda"], required=True)
    print(write_lock(ap.parse_args().lock))
