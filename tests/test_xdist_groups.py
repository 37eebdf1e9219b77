"""`python -m impl test` runs the suite on pytest-xdist workers with `--dist loadgroup`: what shares state must
stay on one worker (a milestone's checks share one run; w09 and w15 reuse w07's model). xdist 3.8 tags node ids
in a way pytest 9.2 ignores, so the conftest tags them itself; this checks the grouping as the scheduler sees it."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_milestones_checks_and_the_checks_reusing_its_model_run_on_one_worker(tmp_path):
    # gpu1 rows skip at once on this machine: the scheduling is what is looked at
    r = subprocess.run([sys.executable, "-m", "pytest", "acceptance", "-m", "(w07 or w09 or w15 or w11) and gpu1",
                        "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:randomly"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "LLM_MILESTONES_REPORTS": str(tmp_path)})
    lines = re.findall(r"\[(gw\d)\] \[ *\d+%\] \w+ (\S+)", r.stdout)
    assert lines, r.stdout[-3000:]
    workers = {}
    for worker, nodeid in lines:
        group = nodeid.rsplit("@", 1)[1] if "@" in nodeid else None
        workers.setdefault(group, set()).add(worker)
    assert set(workers) == {"acceptance:w07", "acceptance:w11"}, workers
    assert all(len(w) == 1 for w in workers.values()), f"a group ran on several workers: {workers}"
