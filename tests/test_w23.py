"""w23's portfolio site from a small synthetic scorecard (written through impl.core.scorecard.write): every page
built offline, every number printed from a record matching it and the sabotage twins (a number edited anywhere
it is printed: a headline, a gauge label, a history target, a per-seed value, an index count; one turned into
plain text or removed; one edited with the site's own copy of the scorecard) caught, the site in headless Chromium
with no console error or broken link and its twin (a dead link and a missing image) caught, résumé bullets from
passing rows only, the interviews YAML validated (a repeated entry counted once), bad input refused without a
half-written site, a shortfall of mock interviews a FAIL row, and `python -m impl test` running w23 after every
other phase and publishing the site with w23's own rows."""
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from impl import adapters
from impl.core import scorecard
from impl.core.profiles import load_profile, override
from impl.w23_portfolio.evidence import PortfolioInputError, load_evidence
from impl.w23_portfolio.site import num

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


SEEDS = {"0": 277.83, "1": 281.27}
SCORES = {"gpt": {"arc_easy": 0.4417, "hellaswag": 0.3125}}
ROWS = [row(), row(check="test_ppl", time="2026-11-29T10:00:00Z", value=260.0),  # older: history only
        row(milestone="w03", check="test_stories", metric="clm_val_ppl / before", direction="lower", target=0.85,
            value=0.7766, curve=None, extra={"baseline before_finetune": 48.31, "stories": STORY}),
        row(milestone="w07", check="test_qlora", metric="qlora_rougeL - before", direction="higher", target=0.05,
            value=-0.0958, status="fail", message="qlora missed", curve=None, extra={"examples": ANSWERS}),
        row(milestone="w09", check="test_load", status="error", value=None, message="server died", curve=None, extra={}),
        row(milestone="w11", check="test_f1", profile="gpu1", status="skip", value=None, message="needs 1 GPU",
            curve=None, extra={}),
        row(milestone="w05", check="test_zero2", status="fail", value=281.27, target=275.0, message="worst seed missed",
            curve=None, extra={"value per seed": SEEDS, "worst seed": 1}),
        row(milestone="w15", check="test_lm_eval", metric="avg_acc - chance", direction="higher", target=0.05,
            value=0.1271, curve=None, extra={"scores by model": SCORES,
                                             "headline": {"SmolLM2 average": 0.4132, "w01 GPT average": 0.2718}})]
# between the two w01 sessions: the check broke after measuring; an error is not a measurement of a trend
BROKE = row(check="test_ppl", status="error", value=999.5, time="2026-11-29T12:00:00Z", message="crashed", curve=None)
# every number above as the site prints it, and only there: none of them may appear on a page as plain text
PRINTED = ["246.4", "812.5", "1234567", "8.25", "6.12", "0.7766", "48.31", "-0.0958", "277.8", "281.3", "0.4417",
           "0.3125", "0.1271", "999.5", "0.4132", "0.2718"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    scorecard.write(ROWS[1:2], out)  # an earlier session
    scorecard.write([BROKE], out)  # one that broke
    scorecard.write([ROWS[0], *ROWS[2:]], out)
    return out


@pytest.fixture(scope="module")
def built(reports):
    return adapters.w23_build(CPU, reports / "scorecard.json", reports / "site")


def html_of(site, name):
    return (site.path / name).read_text()


# --- the site and its numbers ----------------------------------------------------------------------------------------
W01 = ["row", "w01", "test_ppl", "cpu"]  # the address of a row's numbers (see impl/w23_portfolio/site.py)
W05_SEED_1 = ["row", "w05", "test_zero2", "cpu", "extra", "value per seed", "1"]
PASSING = ["count", "rows", {"status": ["pass"]}]
W15_HEADLINE = ["row", "w15", "test_lm_eval", "cpu", "extra", "headline", "SmolLM2 average"]


def test_the_site_has_an_index_a_page_per_milestone_history_writeup_resume_and_interviews(built):
    from impl.core.registry import MILESTONES

    assert {"index.html", "writeup.html", "resume.html", "history.html", "interviews.html"} <= set(built.pages)
    assert all(f"milestones/{m}.html" in built.pages for m in MILESTONES)
    index = html_of(built, "index.html")
    assert all(f'href="milestones/{m}.html"' in index for m in MILESTONES) and "not implemented" in index
    assert num([*W01, "value"], 246.356) in index  # the headline against its target
    w03, w07 = html_of(built, "milestones/w03.html"), html_of(built, "milestones/w07.html")
    assert "tiny models ramble" in w03 and "Blue." in w07 and "qlora missed" in w07  # samples, and why not a pass
    w01 = html_of(built, "milestones/w01.html")
    assert "impl/w01_gpt/" in w01 and "<svg class='gauge'" in w01 and "2 CPU thread(s)" in w01
    history = html_of(built, "history.html")
    assert num(["history", 0, "value"], 260.0) in history  # every session's rows, oldest first
    for page in built.pages:  # nothing from outside: no CDN, no web font
        assert not re.search(r'(?:src|href)="(?:https?:)?//', html_of(built, page)), page
    assert "fonts.googleapis" not in html_of(built, "index.html")


def test_no_number_from_a_record_is_printed_without_citing_it(built):
    """Gauge labels, curve axes, bar tooltips, per-seed values, history targets: each number the site prints from
    a record is marked up, so the numbers check sees it (before, a gauge label or a value in <pre> was plain)."""
    from impl.w23_portfolio.site import NUMBER_MARKUP

    for page in built.pages:
        plain = NUMBER_MARKUP.sub("", html_of(built, page))
        shown = [n for n in PRINTED if re.search(rf"(?<![\d.]){re.escape(n)}(?!\.?\d)", plain)]
        assert shown == [], f"{page} prints {shown} as plain text"
    w01, w05 = html_of(built, "milestones/w01.html"), html_of(built, "milestones/w05.html")
    assert num([*W01, "value"], 246.356, tag="tspan") in w01 and num([*W01, "curve", 1, 1], 6.125, ".3g", "tspan") in w01
    assert num(W05_SEED_1, 281.27) in w05
    assert sum(built.printed.values()) == built.numbers and built.printed["index.html"] > 10


def _edited(built, tmp_path, page: str, old: str, new: str):
    """A copy of the built site with one edit on one page (the edit must apply: a twin that changes nothing
    proves nothing)."""
    twin = tmp_path / "site"
    shutil.copytree(built.path, twin)
    text = (twin / page).read_text()
    assert text.count(old) >= 1, f"{old!r} is not on {page}"
    (twin / page).write_text(text.replace(old, new, 1))
    return dataclasses.replace(built, path=twin)


SABOTAGE = {  # what is edited: (page, the markup before, after)
    "a headline value": ("index.html", num([*W01, "value"], 246.356), num([*W01, "value"], 236.4)),
    "a gauge label": ("milestones/w01.html", num([*W01, "value"], 246.356, tag="tspan"),
                      num([*W01, "value"], 146.4, tag="tspan")),
    "a history target": ("history.html", num(["history", 0, "target"], 280.0), num(["history", 0, "target"], 180.0)),
    "a per-seed value in <pre>": ("milestones/w05.html", num(W05_SEED_1, 281.27), num(W05_SEED_1, 218.3)),
    "an index count": ("index.html", num(PASSING, 3), num(PASSING, 4)),
    "a seed's quantity heading the grid": ("index.html", num(W15_HEADLINE, 0.4132), num(W15_HEADLINE, 0.4312)),
    "a rounding inside the old 1e-3 tolerance": ("index.html", num([*W01, "value"], 246.356), num([*W01, "value"], 246.5)),
    "a number turned into plain text": ("writeup.html", num([*W01, "value"], 246.356), "246.4"),
    "a number removed": ("resume.html", num([*W01, "value"], 246.356), ""),
}


def test_every_number_printed_from_a_record_matches_the_scorecard_it_was_built_from(built):
    checked, mismatched = adapters.w23_numbers(built, built.source)
    assert checked == built.numbers > 40 and mismatched == []
    assert CPU.targets["numbers_mismatched"].passes(len(mismatched))


@pytest.mark.parametrize("what", list(SABOTAGE))
def test_a_number_edited_removed_or_unmarked_anywhere_on_the_site_is_caught(built, tmp_path, what):
    """The sabotage twins: each edit is one mismatch, whichever number it touches."""
    page, old, new = SABOTAGE[what]
    edited = _edited(built, tmp_path, page, old, new)
    checked, mismatched = adapters.w23_numbers(edited, built.source)
    assert len(mismatched) == 1 and mismatched[0].startswith(page), mismatched
    assert not CPU.targets["numbers_mismatched"].passes(len(mismatched))


def test_the_numbers_are_compared_with_the_scorecard_not_the_sites_own_copy(built, tmp_path):
    """A page and the copy of the scorecard inside the site edited together still disagree with the scorecard
    the site was built from."""
    edited = _edited(built, tmp_path, "index.html", num([*W01, "value"], 246.356), num([*W01, "value"], 236.4))
    copy = edited.path / "_mkdocs" / "scorecard.json"
    copy.write_text(copy.read_text().replace("246.356", "236.4"))
    assert len(adapters.w23_numbers(edited, built.source)[1]) == 1


def test_a_site_without_the_builds_record_of_its_numbers_is_one_clear_error(built, tmp_path):
    twin = tmp_path / "site"
    shutil.copytree(built.path, twin)
    (twin / "_mkdocs" / "numbers.json").unlink()
    with pytest.raises(PortfolioInputError, match=r"numbers.json is missing or unreadable: .* \(rebuild it") as e:
        adapters.w23_numbers(dataclasses.replace(built, path=twin), built.source)
    assert "\n" not in str(e.value)


def test_the_history_trend_counts_measurements_only(built):
    """w01's check passed (260), broke after measuring 999.5 (an error is no measurement), passed (246.4): two
    runs, from 260 to 246.4; the error row is still listed among every row."""
    history = html_of(built, "history.html")
    trend = re.search(r"<tr>\s*<td>w01</td>.*?</tr>", history, re.S).group(0)
    runs = ["count", "history", {"milestone": ["w01"], "check": ["test_ppl"], "profile": ["cpu"], "status": ["pass", "fail"]}]
    assert num(runs, 2) in trend and num(["history", 0, "value"], 260.0) in trend and "999.5" not in trend
    assert num(["history", 1, "value"], 999.5) in history


def test_resume_bullets_come_only_from_passing_rows_each_linking_to_its_evidence(built):
    resume = html_of(built, "resume.html")
    bullets = re.findall(r"<li>(.*?)</li>", resume, re.S)
    bullets = [b for b in bullets if "evidence" in b]
    assert len(bullets) == 3  # w01, w03 and w15 passed; w05 and w07 failed, w09 broke, w11 skipped
    for b in bullets:
        href = re.search(r'href="([^"]+)"', b).group(1)
        page, frag = href.split("#")
        assert f'id="{frag}"' in html_of(built, page)
    assert "qlora" not in resume and "test_load" not in resume
    writeup = html_of(built, "writeup.html")
    assert "missed" in writeup and "server died" in writeup  # the write-up reports failures too, from the records


def test_the_site_draws_rows_with_the_scorecards_public_rendering_api_only():
    """site.py uses no private helper of impl.core.scorecard: the scorecard's pages and the site share one
    public API (formatting, targets, grid cells, titles, plots), not copies."""
    import ast

    tree = ast.parse((ROOT / "impl" / "w23_portfolio" / "site.py").read_text())
    private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
               and n.value.id == "card_mod" and n.attr.startswith("_")]
    private += [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "impl.core.scorecard"
                for a in n.names if a.name.startswith("_")]
    assert private == []
    assert "def _gauge" not in (ROOT / "impl" / "core" / "scorecard.py").read_text()


# --- in a real browser ------------------------------------------------------------------------------------------------
def test_every_page_opens_in_chromium_and_a_dead_link_and_missing_image_are_caught(built, tmp_path):
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
    broken = adapters.w23_browse(CPU, dataclasses.replace(built, path=twin))
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


def _interviews(n: int) -> list[dict]:
    return [{**INTERVIEW, "date": f"2026-11-{i + 1:02d}"} for i in range(n)]


def test_an_interview_repeated_word_for_word_counts_once(tmp_path):
    from impl.w23_portfolio.evidence import distinct_interviews

    (tmp_path / "i.yaml").write_text(yaml.safe_dump({"interviews": [INTERVIEW] * 3 + _interviews(2)}))
    evidence = load_evidence(tmp_path / "i.yaml")
    assert len(evidence.interviews) == 5 and len(distinct_interviews(evidence)) == 2  # 2026-11-01 is INTERVIEW's twin


def test_in_a_fresh_session_the_site_shows_its_rows_and_a_shortfall_of_interviews_is_a_fail_row(tmp_path):
    """The acceptance checks under the pytest plugin, as in a fresh CI checkout: a w01 check of the same session
    records a row first, and the site is built from it. Interviews: 2 recorded is a FAIL row with the count (it
    replaces an earlier PASS: a skip would have left it standing), 3 identical entries count as 1 (FAIL), 3
    distinct ones and a repeat pass with 3, and no record file at all (nobody has started) is an expected failure
    in pytest and a FAIL row with 0 (four user profiles)."""
    TINY = ROOT / "tests" / "data" / "tiny.yaml"
    check = "test_at_least_three_mock_interviews_are_recorded_with_feedback"
    (tmp_path / "test_a_w01.py").write_text(
        "import pytest\n\n\n@pytest.mark.check('w01', target='val_ppl')\n"
        "def test_records_a_row(spec, scorecard):\n    scorecard.check(123.25, data='d')\n")
    recorded = {"iv2": _interviews(2), "iv3": _interviews(3) + _interviews(1), "same3": [INTERVIEW] * 3}
    profiles = []
    for name, interviews in [*recorded.items(), ("none", None)]:
        if interviews is not None:
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"interviews": interviews}))
        w23 = {**CPU.model_dump(mode="json", exclude={"interviews"}), "interviews": str(tmp_path / f"{name}.yaml")}
        body = {"name": name, "description": "test", "milestones": {"w23": w23}}
        if name == "iv2":
            body["milestones"]["w01"] = yaml.safe_load(TINY.read_text())["milestones"]["w01"]
        (tmp_path / f"p_{name}.yaml").write_text(yaml.safe_dump(body))
        profiles += ["--profile", str(tmp_path / f"p_{name}.yaml")]
    scorecard.write([row(milestone="w23", check=check, profile="iv2", metric="mock_interviews", direction="higher",
                         target=2.5, value=3, curve=None, extra={}, time="2026-01-01T00:00:00Z")],
                    tmp_path / "reports")  # an earlier PASS
    (tmp_path / "test_w23_portfolio.py").write_text((ROOT / "acceptance" / "test_w23_portfolio.py").read_text())
    p = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_a_w01.py"),
                        str(tmp_path / "test_w23_portfolio.py"), "-k", "mock_interviews or (every_number and iv2) or records",
                        "-p", "conftest", "--rootdir", str(tmp_path), *profiles, "--reports-dir", str(tmp_path / "reports"),
                        "-q", "-p", "no:cacheprovider"], cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300)
    summary = p.stdout.strip().splitlines()[-1]
    assert p.returncode == 1 and all(n in summary for n in ("2 failed", "3 passed", "1 xfailed")), \
        p.stdout[-3000:] + p.stderr[-2000:]
    rows = {(r["check"], r["profile"]): r for r in json.loads((tmp_path / "reports" / "scorecard.json").read_text())["rows"]}
    short, same, enough = rows[(check, "iv2")], rows[(check, "same3")], rows[(check, "iv3")]
    assert short["status"] == "fail" and short["value"] == 2 and "2 of 3 mock interviews" in short["message"]
    assert same["status"] == "fail" and same["value"] == 1 and same["extra"]["repeated_entries"] == 2
    assert enough["status"] == "pass" and enough["value"] == 3 and enough["extra"]["repeated_entries"] == 1
    unstarted = rows[(check, "none")]
    assert unstarted["status"] == "fail" and unstarted["value"] == 0 and "a person records them" in unstarted["message"]
    numbers = rows[("test_every_number_on_the_site_matches_the_record_it_cites", "iv2")]
    assert numbers["status"] == "pass" and numbers["extra"]["numbers_checked"] == numbers["extra"]["numbers_printed"] > 0
    w01 = (tmp_path / "reports" / "site" / "milestones" / "w01.html").read_text()
    assert num(["row", "w01", "test_records_a_row", "iv2", "value"], 123.25) in w01  # this session's row


CHECKS_IN_EVERY_PHASE = '''import json
from pathlib import Path

import pytest


@pytest.mark.check("w01", target="val_ppl")
def test_not_timed(spec, scorecard):
    scorecard.check(100.0, data="d")


@pytest.mark.timing
@pytest.mark.check("w01", target="ddp_max_param_diff")
def test_timed(spec, scorecard):
    scorecard.check(1e-6, data="d")


@pytest.mark.check("w23", target="numbers_mismatched")
def test_portfolio_sees_every_other_row(spec, scorecard, request):
    card = Path(request.config._reports) / "scorecard.json"
    rows = json.loads(card.read_text())["rows"] if card.exists() else []
    missing = sorted({"test_not_timed", "test_timed"} - {r["check"] for r in rows})
    scorecard.check(len(missing), data=f"missing from {card}: {missing}")
'''


def test_the_test_command_runs_w23_alone_after_the_timing_phase():
    from impl.__main__ import PORTFOLIO_PHASE, suite_phases

    (first, first_opts), (_, timing_opts), (last, last_opts) = suite_phases("w07 or w23", 2)
    assert first_opts[:2] == ["-n", "2"] and first_opts[-2:] == ["-m", "(w07 or w23) and not timing and not w23"]
    assert timing_opts == ["-m", "(w07 or w23) and timing and not w23"]
    assert (last, last_opts) == (PORTFOLIO_PHASE, ["-m", "(w07 or w23) and w23"])  # alone: no xdist beside it


def test_python_m_impl_test_checks_the_portfolio_after_every_other_phase_and_publishes_its_rows(tmp_path, monkeypatch):
    """`python -m impl test` over three checks written here: w23's (it counts the other checks' rows in the
    scorecard it reads) runs after the not-timing and the timing phase and finds both rows, and the site left in
    reports/ shows w23's own row. Before, w23 ran in the first phase: the timing row was not there yet."""
    from impl.__main__ import PORTFOLIO_PHASE, main

    tiny = yaml.safe_load((ROOT / "tests" / "data" / "tiny.yaml").read_text())["milestones"]["w01"]
    profile = {"name": "order", "description": "test", "milestones": {"w01": tiny, "w23": CPU.model_dump(mode="json")}}
    (tmp_path / "order.yaml").write_text(yaml.safe_dump(profile))
    (tmp_path / "test_checks.py").write_text(CHECKS_IN_EVERY_PHASE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    reports = tmp_path / "reports"
    rc = main(["test", "--workers", "1", "--summary", str(tmp_path / "summary.json"), str(tmp_path / "test_checks.py"),
               "-p", "conftest", "--rootdir", str(tmp_path), "--profile", str(tmp_path / "order.yaml"),
               "--reports-dir", str(reports), "-p", "no:cacheprovider", "-q"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert rc == 0, summary
    assert [(p["phase"], p["counts"]["passed"]) for p in summary["phases"]] == [
        ("not timing", 1), ("timing, alone on the cores", 1), (PORTFOLIO_PHASE, 1)]
    assert summary["total"]["passed"] == 3
    rows = {r["check"]: r for r in json.loads((reports / "scorecard.json").read_text())["rows"]}
    assert rows["test_portfolio_sees_every_other_row"]["value"] == 0
    published = (reports / "site" / "milestones" / "w23.html").read_text()
    assert "test_portfolio_sees_every_other_row" in published and "test_timed" in (reports / "site" / "history.html").read_text()


def test_a_sample_cut_inside_a_code_block_does_not_swallow_the_rest_of_the_page():
    """w07's answers are cut at 32 tokens, often inside ```python: a page built from them lost every heading after
    (mkdocs strict: missing anchors). md_text closes a fence left open, and only a bare fence closes one."""
    from impl.w23_portfolio.site import md_text

    text = md_text("- before: x\n```python\ndef f(\n```python\nprint(1\n")
    assert text.endswith("\n```") and text.count("```") == 3
    balanced = "```\ncode\n```\nafter"
    assert md_text(balanced) == balanced
