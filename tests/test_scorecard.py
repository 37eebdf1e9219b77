"""The scorecard: its forms, its merging, and the pytest plugin end to end (xdist, skips, errors, Ctrl-C)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from impl.core import scorecard
from impl.core.registry import MILESTONES

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.yaml"


def row(**kw):
    base = {"milestone": "w01", "check": "test_x", "profile": "cpu", "status": "pass", "metric": "val_ppl",
            "direction": "lower", "target": 300.0, "value": 220.0, "data": "d", "protocol": "p",
            "curve": [(0, 8.0), (10, 6.0)], "extra": {"sample": "It is a truth"}}
    return {**base, **kw}


def test_every_milestone_appears_and_the_newest_row_wins(tmp_path):
    scorecard.write([row(value=250.0)], tmp_path)
    scorecard.write([row(value=220.0), row(profile="gpu1", status="skip", value=None, curve=None)], tmp_path)
    rows = json.loads((tmp_path / "scorecard.json").read_text())["rows"]
    w01 = [r for r in rows if r["milestone"] == "w01"]
    assert {(r["profile"], r["value"]) for r in w01} == {("cpu", 220.0), ("gpu1", None)}
    missing = {r["milestone"] for r in rows if r["status"] == "not-implemented"}
    assert missing == set(MILESTONES) - {"w01"}
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 3


def test_markdown_and_html_show_profile_data_protocol_and_plots(tmp_path):
    scorecard.write([row(), row(check="test_y", status="fail", value=400.0, message="ppl too high")], tmp_path)
    md = (tmp_path / "scorecard.md").read_text()
    assert "| w01 | test_x | cpu | PASS | val_ppl | 220 | < 300 | d | p |" in md
    assert "ppl too high" in md and "NOT-IMPLEMENTED" in md
    page = (tmp_path / "scorecard.html").read_text()
    assert page.count("class='gauge'") == 2 and page.count("class='curve'") == 2  # each check its own plots
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    os.remove(tmp_path / "scorecard.html")
    from impl.__main__ import main

    os.environ["LLM_MILESTONES_REPORTS"] = str(tmp_path)
    try:
        assert main(["report"]) == 0
    finally:
        del os.environ["LLM_MILESTONES_REPORTS"]
    assert (tmp_path / "scorecard.html").exists()


def test_the_grid_shows_the_seeds_quantities_before_the_gated_margin(tmp_path):
    """w11's gate is a margin over its baselines; its grid cell leads with what the seed names: RAG F1, with
    closed-book and the oracle beside it."""
    head = row(milestone="w11", check="test_f1", metric="f1 - max(closed_book, random_context)", direction="higher",
               order=0, target=0.016, value=0.024, curve=None,
               extra={"headline": {"RAG F1": 0.1223, "closed-book": 0.0837, "oracle": 0.1847}})
    scorecard.write([head, row(milestone="w11", check="test_recall", metric="recall_at_k", direction="higher",
                               target=0.5, value=0.8, curve=None, order=1)], tmp_path)
    md = (tmp_path / "scorecard.md").read_text()
    assert ("| w11 RAG with LangChain | SQuAD dev F1 > 0.6, response time recorded | PASS 2/2 RAG F1 0.1223, "
            "closed-book 0.0837, oracle 0.1847; f1 - max(closed_book, random_context) = 0.024 > 0.016 |") in md
    page = (tmp_path / "scorecard.html").read_text()
    assert "RAG F1 0.1223, closed-book 0.0837, oracle 0.1847<small>" in page.replace("<br>", "")
    assert scorecard.headline_html(row()) == ""  # a check without a headline: its gated value heads the cell


def _pytest(tmp_path, *args, cache=None):
    env = {**os.environ, "LLM_MILESTONES_ARTIFACTS": str(tmp_path / "artifacts")}
    if cache:
        env["LLM_MILESTONES_CACHE"] = str(cache)
    cmd = [sys.executable, "-m", "pytest", "acceptance", "--reports-dir", str(tmp_path / "reports"), "-q", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rows(tmp_path):
    return json.loads((tmp_path / "reports" / "scorecard.json").read_text())["rows"]


def test_plugin_under_xdist_merges_both_workers_rows(tmp_path):
    p = _pytest(tmp_path, "--profile", str(TINY), "--profile", "gpu1", "-n", "2")
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out
    rows = {(r["milestone"], r["check"], r["profile"]): r for r in _rows(tmp_path)}
    ppl = rows[("w01", "test_gpt_from_scratch_reaches_target_validation_perplexity", "tiny")]
    ddp = rows[("w01", "test_ddp_trains_the_same_model_as_one_process", "tiny")]
    skipped = rows[("w01", "test_gpt_from_scratch_reaches_target_validation_perplexity", "gpu1")]
    assert ppl["status"] == "pass" and ppl["value"] < 3500 and ppl["curve"] and "austen+brown" in ppl["data"]
    assert ppl["protocol"].startswith("toy") and ppl["commit"] and ppl["versions"]["torch"]
    assert ddp["status"] == "pass" and ddp["extra"]["backend"] == "gloo"
    assert skipped["status"] == "skip" and "needs 1 GPU(s) with >= 24 GB; found none" in skipped["message"]
    covered = {r["milestone"] for r in rows.values() if r["status"] != "not-implemented"}
    assert "w01" in covered and sum(r["status"] == "not-implemented" for r in rows.values()) == len(MILESTONES) - len(covered)
    assert not any((tmp_path / "reports" / ".rows").iterdir())


def test_a_check_that_breaks_before_measuring_is_an_error_row(tmp_path):
    p = _pytest(tmp_path, "--profile", str(TINY), "-k", "perplexity", cache=tmp_path / "empty-cache")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 1, out
    (r,) = [r for r in _rows(tmp_path) if r["profile"] == "tiny"]
    assert r["status"] == "error" and "python -m impl fetch" in r["message"]


def test_a_missed_target_is_a_fail_row_with_the_value(tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text(TINY.read_text().replace("name: tiny", "name: strict").replace("threshold: 3500", "threshold: 2"))
    p = _pytest(tmp_path, "--profile", str(strict), "-m", "strict", "-k", "perplexity")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 1, out
    (r,) = [r for r in _rows(tmp_path) if r["profile"] == "strict"]
    assert r["status"] == "fail" and r["value"] > 2 and "target < 2" in r["message"]


def _run_checks(tmp_path, body: str, profile: Path = TINY, wait: bool = True):
    """Checks written here (`body`: decorated test functions) run under the suite's own plugin and `profile`."""
    (tmp_path / "test_checks.py").write_text("import time\n\nimport pytest\n\n\n" + body)
    cmd = [sys.executable, "-m", "pytest", str(tmp_path / "test_checks.py"), "-p", "conftest", "--rootdir",
           str(tmp_path), "--profile", str(profile), "--reports-dir", str(tmp_path / "reports"), "-q", "-p",
           "no:cacheprovider"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if wait:
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &` in a script) inherits SIGINT
    # ignored, and Python then keeps ignoring it
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_an_interrupted_session_still_writes_the_scorecard(tmp_path):
    """Ctrl-C during the second check: pytest stops as interrupted and the first check's row is in the scorecard.
    The second check waits until it is interrupted, so the signal cannot arrive after it (a real w01 check of the
    tiny profile ends in under a second, which a loaded machine let the signal miss)."""
    p = _run_checks(tmp_path, "@pytest.mark.check('w01', target='val_ppl')\n"
                              "def test_first(spec, scorecard):\n"
                              "    scorecard.check(100.0, data='d')\n\n\n"
                              "@pytest.mark.check('w01', target='ddp_max_param_diff')\n"
                              "def test_second_runs_until_interrupted(spec, scorecard):\n"
                              "    time.sleep(600)\n", wait=False)

    def first_row_written():
        return any(f.read_text().endswith("\n") for f in (tmp_path / "reports" / ".rows").glob("*/main.jsonl"))

    deadline = time.time() + 300
    while not first_row_written():
        assert p.poll() is None and time.time() < deadline, p.stdout.read() if p.poll() is not None else "no row"
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2, out  # pytest's "interrupted"
    rows = [r for r in _rows(tmp_path) if r["profile"] == "tiny"]
    assert [(r["check"], r["status"], r["value"]) for r in rows] == [("test_first", "pass", 100.0)]


def test_a_requirement_of_the_check_missed_after_measuring_is_a_fail_row_not_an_error(tmp_path):
    """w03's five stories, ZeRO-2's partitions adding up: asserted after `scorecard.check`, they are part of the
    check, so missing one is FAIL with its message, even though the recorded value passes its target."""
    p = _run_checks(tmp_path, "@pytest.mark.check('w01', target='val_ppl')\n"
                              "def test_measures_then_misses_a_requirement(spec, scorecard):\n"
                              "    scorecard.check(100.0, data='d')\n"
                              "    assert 3 >= 5, 'only 3 stories'\n\n\n"
                              "@pytest.mark.check('w01', target='ddp_max_param_diff')\n"
                              "def test_breaks_after_measuring(spec, scorecard):\n"
                              "    scorecard.check(1e-6, data='d')\n"
                              "    raise RuntimeError('the report could not be written')\n")
    assert p.returncode == 1, p.stdout + p.stderr
    rows = {r["check"]: r for r in _rows(tmp_path) if r["profile"] == "tiny"}
    missed = rows["test_measures_then_misses_a_requirement"]
    assert missed["status"] == "fail" and missed["value"] == 100.0 and "only 3 stories" in missed["message"]
    assert rows["test_breaks_after_measuring"]["status"] == "error"


def test_a_check_that_records_no_value_is_an_error_row_not_a_pass(tmp_path):
    """A check that never calls `scorecard.check`, or leaves the loop over `scorecard.each_seed` before its last
    seed, measured nothing: it fails in pytest and is an ERROR row saying so, never a PASS with no value."""
    raw = yaml.safe_load(TINY.read_text())
    raw["milestones"]["w01"]["targets"]["val_ppl"]["seeds"] = [0, 1]
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump(raw))
    p = _run_checks(tmp_path, "@pytest.mark.check('w01', target='ddp_max_param_diff')\n"
                              "def test_measures_nothing(spec, scorecard):\n"
                              "    pass\n\n\n"
                              "@pytest.mark.check('w01', target='val_ppl')\n"
                              "def test_leaves_the_seed_loop_early(spec, scorecard):\n"
                              "    for seeded in scorecard.each_seed(spec):\n"
                              "        scorecard.check(100.0, data='d')\n"
                              "        break\n", profile=profile)
    assert p.returncode == 1 and "2 failed" in p.stdout, p.stdout + p.stderr
    rows = {r["check"]: r for r in _rows(tmp_path) if r["profile"] == "tiny"}
    nothing, early = rows["test_measures_nothing"], rows["test_leaves_the_seed_loop_early"]
    assert nothing["status"] == "error" and nothing["value"] is None and "without recording a value" in nothing["message"]
    assert early["status"] == "error" and early["value"] is None and "seeds done: [0] of [0, 1]" in early["message"]


def test_a_later_skip_never_replaces_a_measured_row_it_is_shown_as_the_last_attempt(tmp_path):
    gpu = row(profile="gpu1", value=48.0, host="gpu-box", hardware="1x H200", time="2026-11-30T02:00:00Z")
    scorecard.write([gpu], tmp_path)
    laptop = row(profile="gpu1", status="skip", value=None, curve=None, host="laptop", time="2026-11-30T09:00:00Z",
                 message="needs 1 GPU(s) with >= 24 GB; found none")
    scorecard.write([laptop], tmp_path)
    (r,) = [x for x in json.loads((tmp_path / "scorecard.json").read_text())["rows"] if x["profile"] == "gpu1"]
    assert r["status"] == "pass" and r["value"] == 48.0 and r["host"] == "gpu-box"
    assert r["last_attempt"]["status"] == "skip" and r["last_attempt"]["host"] == "laptop"
    md, page = (tmp_path / "scorecard.md").read_text(), (tmp_path / "scorecard.html").read_text()
    assert "PASS (last attempt: skip)" in md and "gpu-box, 1x H200" in md and "found none" in md
    assert "last attempted: skip on laptop" in page
    history = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(h)["status"] for h in history] == ["pass", "skip"]  # history keeps everything


def test_an_error_is_an_outcome_not_a_measurement_it_replaces_older_evidence_and_a_skip_never_replaces_it(tmp_path):
    """Measured means judged against the target (pass, fail). An error is no measurement, but it is the newest
    outcome: the grid shows the reason (a missing fixture, a crash) rather than a PASS the current code or machine
    no longer reproduces, and the pass stays in the history. A later skip is only the last attempt."""
    assert scorecard.MEASURED == ("pass", "fail") and set(scorecard.OUTCOMES) == {"pass", "fail", "error"}
    scorecard.write([row(value=220.0, time="2026-11-30T01:00:00Z")], tmp_path)
    scorecard.write([row(status="error", value=None, curve=None, message="fixture austen is missing",
                         time="2026-11-30T02:00:00Z")], tmp_path)
    scorecard.write([row(status="skip", value=None, curve=None, message="deselected", time="2026-11-30T03:00:00Z")],
                    tmp_path)
    (r,) = [x for x in json.loads((tmp_path / "scorecard.json").read_text())["rows"] if x["milestone"] == "w01"]
    assert r["status"] == "error" and "fixture austen" in r["message"] and r["last_attempt"]["status"] == "skip"
    history = [json.loads(h) for h in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [(h["status"], h["value"]) for h in history] == [("pass", 220.0), ("error", None), ("skip", None)]


def test_report_merge_folds_another_machines_reports_in_by_time_with_provenance(tmp_path):
    """The nightly GPU job uploads reports/; `python -m impl report --merge` folds it into the local scorecard
    (a subprocess, as a user runs it). Newer measured rows win wherever they come from; older ones do not."""
    local, nightly = tmp_path / "local", tmp_path / "nightly"
    scorecard.write([row(value=230.0, host="laptop", time="2026-11-30T08:00:00Z"),
                     row(profile="gpu1", status="skip", value=None, host="laptop", time="2026-11-30T08:00:00Z")], local)
    scorecard.write([row(value=250.0, host="gpu-box", time="2026-11-29T02:00:00Z"),  # older than the local cpu row
                     row(profile="gpu1", value=48.0, host="gpu-box", hardware="1x H200", time="2026-11-30T02:00:00Z")],
                    nightly)
    env = {**os.environ, "LLM_MILESTONES_REPORTS": str(local)}
    p = subprocess.run([sys.executable, "-m", "impl", "report", "--merge", str(nightly)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "merged 2 rows" in p.stdout, p.stdout + p.stderr
    rows = {x["profile"]: x for x in json.loads((local / "scorecard.json").read_text())["rows"] if x["milestone"] == "w01"}
    assert rows["cpu"]["value"] == 230.0 and rows["cpu"]["host"] == "laptop"
    assert rows["gpu1"]["status"] == "pass" and rows["gpu1"]["host"] == "gpu-box"
    assert "gpu-box, 1x H200" in (local / "scorecard.md").read_text()
    history = (local / "history.jsonl").read_text().splitlines()
    assert len(history) == 4  # the two local rows, the two nightly ones
    again = subprocess.run([sys.executable, "-m", "impl", "report", "--merge", str(nightly)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and (local / "history.jsonl").read_text().splitlines() == history  # kept once
    bad = subprocess.run([sys.executable, "-m", "impl", "report", "--merge", str(tmp_path / "nowhere")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def _chromium():
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_html_scorecard_renders_in_a_real_browser_and_reads_at_a_glance(tmp_path):
    """Headless Chromium (Debian's, installed by bootstrap.sh): the page renders with no console errors, the grid
    has a row for every milestone, Markdown details are HTML tables, pass and fail zones are drawn."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            raise AssertionError("CI must have chromium: bootstrap.sh installs it (apt-get install chromium)")
        import pytest

        pytest.skip("no chromium on this machine (apt-get install chromium)")
    table = "| stage | MiB |\n|---|---|\n| ZeRO-2 | 5.09 |\n| DDP | 10.2 |"
    scorecard.write([row(extra={"stage_table": table, "sample": "It is a truth"}),
                     row(check="test_y", status="fail", value=400.0, message="ppl too high"),
                     row(milestone="w13", check="test_tp", metric="tp_max_grad_diff", value=4.8e-9, target=1e-6,
                         curve=None),
                     row(profile="gpu1", status="skip", value=None, curve=None, message="needs 1 GPU")], tmp_path)
    page = tmp_path / "scorecard.html"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "</html>" in dom.stdout, dom.stderr[-2000:]
    console = [l for l in dom.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert not console, console
    grid = dom.stdout.split("class=\"grid\"")[1].split("</table>")[0]
    assert all(f"href=\"#{m}\"" in grid for m in MILESTONES) and grid.count("not implemented") == len(MILESTONES) - 2
    assert "<th>cpu</th>" in grid and "<th>gpu1</th>" in grid
    assert "<td>ZeRO-2</td>" in dom.stdout  # the Markdown stage table, rendered
    assert "log scale" in dom.stdout  # 4.8e-9 against 1e-6
    shot = tmp_path / "scorecard.png"
    subprocess.run([*common, "--hide-scrollbars", "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
