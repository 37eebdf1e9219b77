"""The two GitHub workflows: valid against GitHub's workflow schema (check-jsonschema's copy, offline), and the CPU
job able to run w21 for real (a privileged job container whose Docker data-root is a volume)."""
import subprocess
import sys
from pathlib import Path

import yaml

from impl.w21_infra import daemon

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _check(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def test_both_workflows_validate_against_githubs_schema_offline():
    assert [w.name for w in WORKFLOWS] == ["ci.yml", "nightly-gpu.yml"]
    r = _check(*WORKFLOWS)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_workflow_with_a_misspelt_key_is_refused(tmp_path):
    broken = tmp_path / "ci.yml"
    broken.write_text((ROOT / ".github" / "workflows" / "ci.yml").read_text().replace("runs-on:", "run-on:"))
    r = _check(broken)
    assert r.returncode != 0 and "run-on" in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_cpu_job_can_start_the_suites_dockerd_and_make_namespaces():
    job = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["cpu"]
    container = job["container"]
    assert "--privileged" in container["options"].split()
    assert str(daemon.STATE) in container["volumes"], "dockerd's overlay2 data-root must not sit on an overlay"
    assert any(step.get("run") == "bash .ci/run" for step in job["steps"])
