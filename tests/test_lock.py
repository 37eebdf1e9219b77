"""The locked environment: this venv runs exactly requirements-cpu.lock, the lock is well-formed, and a drifted or
malformed lock is named, not silently accepted."""
from __future__ import annotations

import importlib.metadata as md

import pytest

from impl.core import lock

CPU_BUILD = "+cpu" in md.version("torch")


@pytest.mark.skipif(not CPU_BUILD, reason="the lock is the CPU environment's; this venv runs a CUDA build of torch")
def test_this_venv_runs_exactly_the_locked_versions():
    """Fails when a package was added, removed, upgraded or downgraded without regenerating the lock."""
    assert lock.differences() == []
    pins = lock.read()
    assert pins["torch"] == "2.13.0+cpu" and "deepspeed" in pins and len(pins) > 200


def test_every_pin_carries_a_sha256_and_bootstrap_installs_the_lock_with_hashes_required():
    lines = [l for l in lock.LOCK_FILE.read_text().splitlines() if l and not l.startswith("#")]
    assert all("--hash=sha256:" in l for l in lines) and len(lines) == len(lock.read())
    bootstrap = (lock.ROOT / "bootstrap.sh").read_text()
    assert "--require-hashes --no-deps -r" in bootstrap and "requirements-cpu.lock" in bootstrap


def test_a_drifted_environment_is_named_package_by_package(tmp_path, monkeypatch):
    pins = lock.read()
    drifted = dict(pins, filelock="0.0.1", **{"not-installed-pkg": "1.0"})
    del drifted["pyyaml"]
    path = tmp_path / "drifted.lock"
    path.write_text("".join(f"{k}=={v} --hash=sha256:{'0' * 64}\n" for k, v in drifted.items()))
    monkeypatch.setattr(lock, "installed", lambda: pins)
    assert sorted(lock.differences(path)) == sorted([
        f"filelock: locked 0.0.1, installed {pins['filelock']}", "not-installed-pkg: locked 1.0, not installed",
        f"pyyaml: installed {pins['pyyaml']}, not in the lock"])


@pytest.mark.parametrize("text, message", [
    ("torch>=2.4 --hash=sha256:" + "0" * 64, "not `name==version --hash"),
    ("torch==2.13.0", "not `name==version --hash"),
])
def test_a_malformed_lock_is_a_clear_error(tmp_path, text, message):
    (tmp_path / "bad.lock").write_text(text + "\n")
    with pytest.raises(lock.LockError, match=message):
        lock.read(tmp_path / "bad.lock")


def test_a_missing_lock_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(lock.LockError, match="python -m impl lock"):
        lock.read(tmp_path / "nothing.lock")
