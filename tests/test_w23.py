"""w23's portfolio site from a small synthetic scorecard (written through impl.core.scorecard.write): every page
built offline, the numbers matching their records and the sabotage twin (one number edited) caught, the site in
headless Chromium with no console error or broken link and its twin (a dead link and a missing image) caught,
résumé bullets from passing rows only, the interviews YAML validated, bad input refused without a half-written
site, and the mock_interviews check skipping with the count while short."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from impl import adapters
from impl.core import scorecard
from impl.core.profiles import load_profile, override
from impl.w23_portfolio.evidence import PortfolioInputError, load_evidence

ROOT = Path(__file__).resolve().parents[1]
CPU = load_profile("cpu").milestone("w23")
STORY = "[1] prompt: 'It is a truth'\nIt is a truth that tiny models ramble."
ANSWERS = "**1. Name a colour.**\n\n> before: colour colour\n\n> after: Blue."


def row(**kw):
    base = {"milestone": "w01", "check": "test_ppl", "profile": "cpu", "status": "pass", "metric": "val_ppl",
            "direction": "lower", "target": 280.0, "value": 246.356, "data": "WikiText-2 (offline)", "protocol": "p",
            "hardware": "2 CPU thread(s)", "host": "box", "commit": "abc1234", "time": "2026-11-30T10:00:00Z",
            "curve": [(0, 8.25), (10, 6.125)], "extra": {"unigram_baseline_ppl": 812.5, "params": 1234567}}
    return {**base, **kw}


ROWS = [row(), row(check="test_ppl", time="2026-11-29T10:00:00Z", value=260.0),  # older: history only
        row(milestone="w03", check="test_stories", metric="clm_val_ppl / before", direction="lower", target=0.85,
            value=0.7766, curve=None, extra={"baseline before_finetune": 48.31, "stories": STORY}),
        row(milestone="w07", check="test_qlora", metric="qlora_rougeL - before", direction="higher", target=0.05,
            value=-0.0958, status="fail", message="qlora missed", curve=None, extra={"examples": ANSWERS}),
        row(milestone="w09", check="test_load", status="error", value=None, message="server died", curve=None, extra={}),
        row(milestone="w11", check="test_f1", profile="gpu1", status="skip", value=None, message="needs 1 GPU",
            curve=None, extra={})]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    scorecard.write(ROWS[1:2], out)  # an earlier session
    scorecard.write([ROWS[0], *ROWS[2:]], out)
    return out


@pytest.fixture(scope="module")
def built(reports):
    return adapters.w23_build(CPU, reports / "scorecard.json", reports / "site")


def html_of(site, name):
    return (site.path / name).read_text()


# --- the site and its numbers ----------------------------------------------------------------------------------------
def test_the_site_has_an_index_a_page_per_milestone_history_writeup_resume_and_interviews(built):
    from impl.core.registry import MILESTONES

    assert {"index.html", "writeup.html", "resume.html", "history.html", "interviews.html"} <= set(built.pages)
    assert all(f"milestones/{m}.html" in built.pages for m in MILESTONES)
    index = html_of(built, "index.html")
    assert all(f'href="milestones/{m}.html"' in index for m in MILESTONES) and "not implemented" in index
    assert 'data-record="w01/test_ppl/cpu/value">246.4</span>' in index  # the headline against its target
    w03, w07 = html_of(built, "milestones/w03.html"), html_of(built, "milestones/w07.html")
    assert "tiny models ramble" in w03 and "Blue." in w07 and "qlora missed" in w07  # samples, and why not a pass
    w01 = html_of(built, "milestones/w01.html")
    assert "impl/w01_gpt/" in w01 and "<svg class='gauge'" in w01 and "2 CPU thread(s)" in w01
    history = html_of(built, "history.html")
    assert 'data-record="history/0/value">260</span>' in history  # both sessions' rows, oldest first
    for page in built.pages:  # nothing from outside: no CDN, no web font
        assert not re.search(r'(?:src|href)="(?:https?:)?//', html_of(built, page)), page
    assert "fonts.googleapis" not in html_of(built, "index.html")


def test_every_number_matches_its_record_and_an_edited_number_is_caught(built, tmp_path):
    """The sabotage twin: one number of a built page changed by hand."""
    import shutil

    checked, mismatched = adapters.w23_numbers(built)
    assert checked == built.numbers > 20 and mismatched == []
    target = CPU.targets["numbers_mismatched"]
    assert target.passes(len(mismatched))
    twin = tmp_path / "site"
    shutil.copytree(built.path, twin)
    page = twin / "milestones" / "w01.html"
    page.write_text(page.read_text().replace('data-record="w01/test_ppl/cpu/value">246.4<',
                                             'data-record="w01/test_ppl/cpu/value">236.4<', 1))
    edited = type(built)(twin, built.pages, built.numbers, built.rows)
    checked, mismatched = adapters.w23_numbers(edited)
    assert len(mismatched) == 1 and "236.4" in mismatched[0] and not target.passes(len(mismatched)), mismatched


def test_resume_bullets_come_only_from_passing_rows_each_linking_to_its_evidence(built):
    resume = html_of(built, "resume.html")
    bullets = re.findall(r"<li>(.*?)</li>", resume, re.S)
    bullets = [b for b in bullets if "evidence" in b]
    assert len(bullets) == 2  # w01 and w03 passed; w07 failed, w09 broke, w11 skipped
    for b in bullets:
        href = re.search(r'href="([^"]+)"', b).group(1)
        page, frag = href.split("#")
        assert f'id="{frag}"' in html_of(built, page)
    assert "qlora" not in resume and "test_load" not in resume
    writeup = html_of(built, "writeup.html")
    assert "missed" in writeup and "server died" in writeup  # the write-up reports failures too, from the records


# --- in a real browser ------------------------------------------------------------------------------------------------
def test_every_page_opens_in_chromium_and_a_dead_link_and_missing_image_are_caught(built, tmp_path):
    import shutil

    try:
        clean = adapters.w23_browse(CPU, built, tmp_path / "index.png")
    except adapters.w23_BrowserMissing as e:
        if __import__("os").environ.get("CI"):
            raise
        pytest.skip(str(e))
    assert clean["pages"] == len(built.pages) and adapters.w23_problems(clean) == 0, clean
    assert clean["links_checked"] > 50 and (tmp_path / "index.png").stat().st_size > 10_000
    twin = tmp_path / "site"
    shutil.copytree(built.path, twin)
    page = twin / "history.html"
    page.write_text(page.read_text().replace("<h1", '<a href="milestones/w99.html">gone</a><img src="plot.png"><h1', 1))
    broken = adapters.w23_browse(CPU, type(built)(twin, built.pages, built.numbers, built.rows))
    assert len(broken["broken_links"]) == 1 and len(broken["broken_images"]) == 1, broken
    assert not CPU.targets["broken_links"].passes(adapters.w23_problems(broken))


def test_the_scorecard_page_shows_the_screenshot_extra(tmp_path):
    scorecard.write([row(milestone="w23", check="test_site", extra={"screenshot": "w23_index.png"})], tmp_path)
    assert "<img src='w23_index.png'" in (tmp_path / "scorecard.html").read_text()
    assert "![screenshot](w23_index.png)" in (tmp_path / "scorecard.md").read_text()


# --- the evidence YAML and bad input -----------------------------------------------------------------------------------
INTERVIEW = {"date": "2026-11-02", "interviewer": "A. Senior", "questions": ["Why ZeRO-2?"], "feedback": "Clear."}


def test_the_committed_example_validates_uncommented_and_as_it_is():
    example = ROOT / "portfolio" / "interviews.example.yaml"
    assert load_evidence(example).interviews == []
    body = "\n".join(l[2:] for l in example.read_text().splitlines() if l.startswith("# ") and l[2:3] in (" ", "i", "h", "-"))
    parsed = yaml.safe_load(body[body.index("interviews:"):])
    from impl.w23_portfolio.evidence import Evidence

    ev = Evidence.model_validate(parsed)
    assert len(ev.interviews) == 1 and ev.human_evaluations[0].milestone == "w07"


@pytest.mark.parametrize("text, message", [
    ("interviews: [\n  {date: 2026-11-02", r"not valid YAML at line"),
    ("- just a list", r"expected a mapping"),
    (yaml.safe_dump({"interviews": [{**INTERVIEW, "feedback": ""}]}), r"key 'interviews\.0\.feedback'"),
    (yaml.safe_dump({"interviews": [{**INTERVIEW, "date": "last week"}]}), r"key 'interviews\.0\.date'"),
    (yaml.safe_dump({"interviews": [{**INTERVIEW, "feedbak": "x"}]}), r"key 'interviews\.0\.feedbak': Extra inputs"),
])
def test_a_broken_interviews_file_is_one_clear_error(tmp_path, text, message):
    (tmp_path / "i.yaml").write_text(text)
    with pytest.raises(PortfolioInputError, match=message):
        load_evidence(tmp_path / "i.yaml")
    assert load_evidence(tmp_path / "absent.yaml").interviews == []


@pytest.mark.parametrize("case", ["missing", "empty", "not json", "bad yaml"])
def test_bad_input_leaves_the_previous_site_untouched_and_nothing_half_written(reports, tmp_path, case):
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("the previous site")
    source, spec = tmp_path / "scorecard.json", CPU
    if case == "empty":
        scorecard.write([], tmp_path)  # only not-implemented rows
    elif case == "not json":
        source.write_text("{")
    elif case == "bad yaml":
        source.write_text((reports / "scorecard.json").read_text())
        (tmp_path / "i.yaml").write_text("interviews: [")
        spec = override(CPU, interviews=str(tmp_path / "i.yaml"))
    expected = {"missing": "does not exist", "empty": "is empty", "not json": "is not a scorecard",
                "bad yaml": "not valid YAML"}[case]
    with pytest.raises(PortfolioInputError, match=expected):
        adapters.w23_build(spec, source, out)
    assert (out / "index.html").read_text() == "the previous site"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_builds_the_site_and_reports_a_missing_scorecard_in_one_line(reports, tmp_path, capsys):
    from impl.__main__ import main

    assert main(["portfolio", "--scorecard", str(reports / "scorecard.json"), "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "index.html").exists() and "built 17 pages" in capsys.readouterr().out
    assert main(["portfolio", "--scorecard", str(tmp_path / "none.json"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and not (tmp_path / "t").exists()


def test_in_a_fresh_session_the_site_shows_its_rows_and_interviews_skip_with_the_count_while_short(tmp_path):
    """The acceptance checks under the pytest plugin, as in a fresh CI checkout (no scorecard.json yet): a w01
    check of the same session records a row first (xdist order), and the site is built from it; the interview
    check skips with the count at 2 and passes at 3 (two user profiles)."""
    TINY = ROOT / "tests" / "data" / "tiny.yaml"
    (tmp_path / "test_a_w01.py").write_text(
        "import pytest\n\n\n@pytest.mark.check('w01', target='val_ppl')\n"
        "def test_records_a_row(spec, scorecard):\n    scorecard.check(123.25, data='d')\n")
    profiles = []
    for n in (2, 3):
        (tmp_path / f"i{n}.yaml").write_text(yaml.safe_dump({"interviews": [INTERVIEW] * n}))
        w23 = {**CPU.model_dump(mode="json", exclude={"interviews"}), "interviews": str(tmp_path / f"i{n}.yaml")}
        body = {"name": f"iv{n}", "description": "test", "milestones": {"w23": w23}}
        if n == 2:
            body["milestones"]["w01"] = yaml.safe_load(TINY.read_text())["milestones"]["w01"]
        (tmp_path / f"iv{n}.yaml").write_text(yaml.safe_dump(body))
        profiles += ["--profile", str(tmp_path / f"iv{n}.yaml")]
    (tmp_path / "test_w23_portfolio.py").write_text((ROOT / "acceptance" / "test_w23_portfolio.py").read_text())
    p = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_a_w01.py"),
                        str(tmp_path / "test_w23_portfolio.py"), "-k", "mock_interviews or every_number or records",
                        "-p", "conftest", "--rootdir", str(tmp_path), *profiles, "--reports-dir", str(tmp_path / "reports"),
                        "-q", "-p", "no:cacheprovider"], cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    rows = {(r["check"], r["profile"]): r for r in json.loads((tmp_path / "reports" / "scorecard.json").read_text())["rows"]}
    short = rows[("test_at_least_three_mock_interviews_are_recorded_with_feedback", "iv2")]
    assert short["status"] == "skip" and "2 of 3 mock interviews" in short["message"]
    enough = rows[("test_at_least_three_mock_interviews_are_recorded_with_feedback", "iv3")]
    assert enough["status"] == "pass" and enough["value"] == 3
    numbers = rows[("test_every_number_on_the_site_matches_the_record_it_cites", "iv2")]
    assert numbers["status"] == "pass" and numbers["extra"]["numbers_checked"] > 0
    w01 = (tmp_path / "reports" / "site" / "milestones" / "w01.html").read_text()
    assert 'data-record="w01/test_records_a_row/iv2/value">123.2' in w01  # this session's row, before the session ended


def test_a_sample_cut_inside_a_code_block_does_not_swallow_the_rest_of_the_page():
    """w07's answers are cut at 32 tokens, often inside ```python: a page built from them lost every heading after
    (mkdocs strict: missing anchors). md_text closes a fence left open, and only a bare fence closes one."""
    from impl.w23_portfolio.site import md_text

    text = md_text("- before: x\n```python\ndef f(\n```python\nprint(1\n")
    assert text.endswith("\n```") and text.count("```") == 3
    balanced = "```\ncode\n```\nafter"
    assert md_text(balanced) == balanced
