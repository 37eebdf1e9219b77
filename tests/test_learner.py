"""Bring your own implementation: `python -m impl learner init DIR` writes every unit as a stub, `--impl DIR`
puts the units a learner wrote into the unit tests, the CLI's table and the acceptance checks alike, and each
scorecard row says whose code it measured."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from impl import units
from impl.units.learner import init

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.yaml"

# the learner's softmax, written from the docstring; it leaves a mark, so a test can see that it really ran
SOFTMAX = '''def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """mine"""
    import os
    if os.environ.get("LEARNER_MARK"):
        open(os.environ["LEARNER_MARK"], "a").write("softmax\\n")
    z = x - x.max(dim=dim, keepdim=True).values
    return z.exp() / z.exp().sum(dim=dim, keepdim=True)
'''
ATTENTION = '''def causal_attention(q, k, v, dropout_p=0.0):
    """mine: from matmuls, a mask and my softmax"""
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return w01.softmax(scores, -1) @ v
'''


def _write_unit(pkg: Path, name: str, source: str) -> None:
    """Replace the stub of `name` in the learner's w01.py by `source`."""
    text = (pkg / "w01.py").read_text()
    start = text.index(f"def {name}(")
    end = text.index("raise NotImplementedError\n", start) + len("raise NotImplementedError\n")
    (pkg / "w01.py").write_text(text[:start] + source + text[end:])


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "impl", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture
def learner(tmp_path):
    pkg = tmp_path / "my_impl"
    written = init(pkg)
    assert {p.name for p in written} == {"__init__.py", *(f"{m}.py" for m in units.MILESTONES)}
    yield pkg
    units.select(None)


def test_init_writes_every_unit_as_a_stub_with_its_docstring_and_never_overwrites(learner):
    text = (learner / "w01.py").read_text()
    for name, fn in units.catalogue("w01").items():
        assert f"def {name}(" in text and fn.__doc__.strip().splitlines()[0] in text
    units.select(learner)
    assert set(units.whose("w01").values()) == {"missing"}
    (learner / "w01.py").write_text(text + "\n# my notes\n")
    assert init(learner) == [] and (learner / "w01.py").read_text().endswith("# my notes\n")


def test_the_table_says_not_implemented_then_pass_for_the_unit_written_then_fail_for_a_wrong_one(learner):
    r = _cli("units", "--impl", str(learner))
    every_unit = sum(len(units.catalogue(m)) for m in units.MILESTONES)
    assert r.returncode == 1 and r.stdout.count("NOT IMPLEMENTED") == every_unit, r.stdout
    _write_unit(learner, "softmax", SOFTMAX)
    r = _cli("units", "--impl", str(learner), "-m", "w01")
    softmax_line = next(l for l in r.stdout.splitlines() if l.strip().startswith("softmax"))
    assert "PASS" in softmax_line and "learner" in softmax_line, r.stdout
    assert f"1 of {len(units.catalogue('w01'))} units the learner's" in r.stdout
    _write_unit(learner, "softmax", SOFTMAX.replace("z = x - x.max(dim=dim, keepdim=True).values", "z = x"))
    r = _cli("units", "--impl", str(learner), "-m", "w01")
    assert "FAIL" in next(l for l in r.stdout.splitlines() if l.strip().startswith("softmax")), r.stdout


def test_the_unit_tests_run_the_learners_unit_and_a_stub_is_one_clear_error(learner):
    _write_unit(learner, "softmax", SOFTMAX)
    args = [sys.executable, "-m", "pytest", "tests/units/test_units.py", "-q", "-p", "no:randomly", "--impl", str(learner)]
    passed = subprocess.run([*args, "-k", "softmax"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert passed.returncode == 0 and "1 passed" in passed.stdout, passed.stdout[-2000:]
    stub = subprocess.run([*args, "-k", "cross_entropy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert stub.returncode == 1 and "unit w01.cross_entropy is not implemented in" in stub.stdout, stub.stdout[-2000:]


def test_a_learners_module_that_does_not_import_and_a_missing_package_are_one_clear_error(learner, tmp_path):
    (learner / "w01.py").write_text("def softmax(:\n")
    r = _cli("units", "--impl", str(learner))
    assert r.returncode != 0 and "does not import: SyntaxError" in r.stderr, r.stderr
    r = _cli("units", "--impl", str(tmp_path / "nowhere"))
    assert r.returncode != 0 and "is not a learner's package" in r.stderr and "learner init" in r.stderr, r.stderr


def test_w01_trains_on_the_learners_attention_and_softmax_and_the_row_names_the_package(learner, tmp_path):
    """The acceptance check, on a toy profile: the learner's attention (built on the learner's softmax) trains the
    GPT; every other unit falls back to the reference, as asked; the row says so, unit by unit."""
    _write_unit(learner, "softmax", SOFTMAX)
    _write_unit(learner, "causal_attention", ATTENTION)
    mark = tmp_path / "ran"
    r = subprocess.run([sys.executable, "-m", "pytest", "acceptance/test_w01_gpt_from_scratch.py", "-m", "w01",
                        "-k", "perplexity or val_ppl", "--profile", str(TINY), "--impl", str(learner),
                        "--impl-fallback", "--reports-dir", str(tmp_path / "reports"), "-q", "-p", "no:randomly"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "LEARNER_MARK": str(mark),
                            "LLM_MILESTONES_ARTIFACTS": str(tmp_path / "artifacts")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert mark.exists() and "softmax" in mark.read_text(), "the learner's units never ran"
    rows = json.loads((tmp_path / "reports" / "scorecard.json").read_text())["rows"]
    row = next(x for x in rows if x["milestone"] == "w01" and x["status"] != "not-implemented")
    impl = row["implementation"]
    assert impl["implementation"] == str(learner.resolve()) and impl["fallback"] is True
    assert impl["units"]["w01.causal_attention"] == "learner" and impl["units"]["w01.softmax"] == "learner"
    assert impl["units"]["w01.adamw_step"] == "reference"
    assert "learner's package" in (tmp_path / "reports" / "scorecard.md").read_text()
