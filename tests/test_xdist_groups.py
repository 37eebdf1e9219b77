"""`python -m impl test` runs the suite on pytest-xdist workers: what shares state must stay on one worker (a
milestone's checks share one run; w09 and w15 reuse w07's model). The suite gives xdist its own scheduler through
xdist's `pytest_xdist_make_scheduler` hook, so the grouping holds under any `--dist`, plain `pytest -n 2` included.
These run a real cpu acceptance selection with every test skipped at setup: the scheduling is what is looked at."""
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from conftest import pytest_collection_modifyitems, xdist_group

ROOT = Path(__file__).resolve().parents[1]
SELECTION = "cpu and (w07 or w09 or w15 or w11)"


def _workers_by_group(tmp_path, *extra: str) -> dict[str, set]:
    plugin = tmp_path / "skip_everything.py"
    plugin.write_text("import pytest\n\n\n@pytest.hookimpl(tryfirst=True)\ndef pytest_runtest_setup(item):\n"
                      "    pytest.skip('scheduling only')\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "acceptance", "-m", SELECTION, "-n", "2", "-v",
                        "-p", "skip_everything", "-p", "no:randomly", *extra], cwd=ROOT, capture_output=True,
                       text=True, timeout=300,
                       env={**os.environ, "LLM_MILESTONES_REPORTS": str(tmp_path / "reports"),
                            "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    lines = re.findall(r"\[(gw\d)\] \[ *\d+%\] \w+ (\S+)", r.stdout)
    assert len(lines) > 10, r.stdout[-3000:] + r.stderr[-3000:]
    workers: dict[str, set] = {}
    for worker, nodeid in lines:
        workers.setdefault(xdist_group(nodeid), set()).add(worker)
    return workers


def test_under_plain_pytest_n_2_a_milestones_checks_and_those_reusing_its_model_run_on_one_worker(tmp_path):
    workers = _workers_by_group(tmp_path)  # no --dist: xdist's default is `load`, which would scatter them
    assert set(workers) == {"acceptance:w07", "acceptance:w11"}, workers
    assert all(len(w) == 1 for w in workers.values()), f"a group ran on several workers: {workers}"


def test_the_guard_sees_a_lost_grouping(tmp_path):
    # the same selection with the suite's scheduler turned off: xdist's `load` hands tests out one by one
    workers = _workers_by_group(tmp_path, "-p", "no:llm_milestones_grouping")
    assert any(len(w) > 1 for w in workers.values()), workers


def test_groups_follow_the_milestone_of_an_acceptance_module_and_the_module_elsewhere():
    assert xdist_group("acceptance/test_w09_serving.py::test_x[cpu]") == "acceptance:w07"
    assert xdist_group("acceptance/test_w15_eval.py::test_y[gpu1]") == "acceptance:w07"
    assert xdist_group("acceptance/test_w01_gpt_from_scratch.py::test_z[cpu]") == "acceptance:w01"
    assert xdist_group("tests/test_w09.py::test_server[a@b]") == "tests/test_w09.py"
    # twins reusing their check's stages (Runs(share=True)) run on its worker ...
    assert xdist_group("tests/test_w17.py::test_a_twin") == "acceptance:w17"
    assert xdist_group("tests/test_w11.py::test_a_twin") == "acceptance:w11"


def test_within_a_group_the_checks_come_before_the_twins_that_reuse_their_stages():
    ids = ["tests/test_w17.py::test_twin", "tests/test_w01_model.py::test_unit",
           "acceptance/test_w17_rlhf.py::test_win_rate[cpu]", "acceptance/test_w07_lora.py::test_lora[cpu]"]
    items = [SimpleNamespace(nodeid=i) for i in ids]
    pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == [ids[3], ids[2], ids[0], ids[1]]
