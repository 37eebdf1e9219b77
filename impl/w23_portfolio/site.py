"""The portfolio site: a MkDocs (Material theme) project generated from reports/scorecard.json, its history and
the learner's evidence YAML, built offline into a temporary directory and renamed into place.

Every number a page shows from a record is marked up as `<span class="num" data-record="ID">…</span>`, where ID
is `<milestone>/<check>/<profile>/<field>` (field: value, target, extra:<key>, curve:first, curve:last) for a
scorecard row, or `history/<line>/value` for a line of history.jsonl; `check.numbers_mismatched` compares each
with the record it cites. Pages: the index (every milestone's status and headline number against the seed's
target), one page per milestone, the history, a write-up generated from the measured numbers, the résumé
bullets (passing rows only, each linked to its evidence) and the interviews.
"""
from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from impl.core import scorecard as card_mod
from impl.core.registry import MILESTONES
from impl.w23_portfolio.evidence import Evidence, PortfolioInputError, load_evidence

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = "_mkdocs"  # the generated MkDocs project, kept beside the pages it built
CSS = """.num{font-variant-numeric:tabular-nums}.badge{color:#fff;border-radius:3px;padding:1px 6px;font-size:.7rem;
text-transform:uppercase}.plots svg{margin-right:1em;vertical-align:top;max-width:100%}.md-typeset table:not([class]){font-size:.7rem}
"""


@dataclass
class Site:
    path: Path
    pages: list[str] = field(default_factory=list)  # html files, relative to path
    numbers: int = 0  # numbers marked up with the record they cite
    rows: int = 0
    evidence: Evidence = field(default_factory=Evidence)


# --- inputs ----------------------------------------------------------------------------------------------------
def load_card(path: Path) -> dict:
    """The scorecard, or one PortfolioInputError saying what is wrong with it."""
    if not path.exists():
        raise PortfolioInputError(f"{path} does not exist: run the acceptance suite first (pytest acceptance -m cpu) "
                                  f"or pass --scorecard PATH")
    try:
        card = json.loads(path.read_text())
        rows = card["rows"]
        assert isinstance(rows, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise PortfolioInputError(f"{path} is not a scorecard (expected JSON with a list of rows)") from None
    if not [r for r in rows if isinstance(r, dict) and r.get("status") not in (None, "not-implemented")]:
        raise PortfolioInputError(f"{path} is empty: no acceptance check has recorded a row yet "
                                  f"(pytest acceptance -m cpu)")
    card["rows"] = [r for r in rows if isinstance(r, dict) and "milestone" in r]
    return card


def load_history(path: Path | None) -> list[dict | None]:
    """history.jsonl, one entry per line (None where a line is not a row: a torn write is skipped, not fatal)."""
    if path is None or not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
            out.append(r if isinstance(r, dict) and "milestone" in r else None)
        except ValueError:
            out.append(None)
    return out


# --- numbers -------------------------------------------------------------------------------------------------------
def fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return card_mod._fmt(v)
    return str(v)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def row_id(r: dict) -> str:
    return f"{r['milestone']}/{r['check']}/{r['profile']}"


def num(record: str, v) -> str:
    if not is_number(v):
        return html.escape(fmt(v))
    return f'<span class="num" data-record="{html.escape(record, quote=True)}">{fmt(v)}</span>'


def resolve(record: str, card: dict, history: list[dict | None]):
    """The value a data-record ID cites; KeyError when it cites nothing."""
    parts = record.split("/", 3)
    if parts[0] == "history":
        entry = history[int(parts[1])]
        if entry is None:
            raise KeyError(record)
        return entry[parts[2]]
    m, check, profile, fieldname = parts
    row = next((r for r in card["rows"] if r["milestone"] == m and r["check"] == check and r["profile"] == profile), None)
    if row is None:
        raise KeyError(record)
    if fieldname.startswith("extra:"):
        return (row.get("extra") or {})[fieldname[6:]]
    if fieldname in ("curve:first", "curve:last"):
        pts = row.get("curve") or []
        return float(pts[0 if fieldname == "curve:first" else -1][1])
    return row[fieldname]


# --- pages ---------------------------------------------------------------------------------------------------------
def esc(text) -> str:
    """Text from a record, safe inside Markdown: no raw HTML, no table breaks."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def md_text(text: str) -> str:
    """Markdown from a record (a sample, a table, a docstring) kept as Markdown, with no raw HTML: `<` and `&`
    escaped outside indented code (which Markdown escapes itself); `>` stays, for block quotes."""
    out: list[str] = []
    for line in str(text).splitlines():
        if not line.startswith(("    ", "\t")):
            line = line.replace("&", "&amp;").replace("<", "&lt;")
            if line.startswith("- ") and out and out[-1].strip() and not out[-1].startswith("- "):
                out.append("")  # a list right under a paragraph (w07's before/after answers) needs a blank line
        out.append(line)
    fence = None  # a generated answer cut mid code block (w07) must not swallow the rest of the page
    for line in out:
        mark = line.lstrip()[:3]
        if fence is None and mark in ("```", "~~~"):
            fence = mark
        elif fence is not None and line.strip() and set(line.strip()) == {fence[0]} and len(line.strip()) >= 3:
            fence = None  # only a bare fence closes one (```python inside a block does not)
    if fence is not None:
        out.append(fence)
    return "\n".join(out)


def badge(status: str) -> str:
    return f"<span class='badge' style='background:{card_mod.STATUS_COLOUR.get(status, '#757575')}'>{html.escape(status)}</span>"


def anchor(r: dict) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{r['profile']}-{r['check']}")


def target_text(r: dict) -> str:
    if r.get("target") is None:
        return ""
    return f"{'<' if r.get('direction') == 'lower' else '>'} {num(row_id(r) + '/target', r['target'])}"


def measured_text(r: dict) -> str:
    if r.get("value") is None:
        return f"{esc(r.get('metric') or 'value')} not measured" + (f", target {target_text(r)}" if r.get("target") is not None else "")
    return f"{esc(r.get('metric') or 'value')} = {num(row_id(r) + '/value', r['value'])}, target {target_text(r)}"


def code_paths(m: str) -> list[str]:
    paths = sorted(str(p.relative_to(ROOT)) + ("/" if p.is_dir() else "") for p in
                   [*ROOT.glob(f"impl/{m}_*"), *ROOT.glob(f"acceptance/test_{m}_*.py"), *ROOT.glob(f"tests/test_{m}*.py")])
    return paths


def built_text(m: str) -> str:
    """What was built: the acceptance module's own description of the milestone."""
    import ast

    for p in sorted(ROOT.glob(f"acceptance/test_{m}_*.py")):
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        if doc:
            return md_text(doc)
    return ""


def measured(card: dict) -> list[dict]:
    return [r for r in card["rows"] if r.get("status") != "not-implemented"]


def _profiles_of(rows: list[dict]) -> list[str]:
    return sorted({r["profile"] for r in rows}, key=lambda p: (p != "cpu", p))


def index_page(card: dict, rows: list[dict]) -> str:
    counts = {s: sum(r["status"] == s for r in card["rows"]) for s in card_mod.STATUSES}
    lines = ["# LLM milestones portfolio", "",
             f"Every number on these pages is read from the suite's scorecard (generated {esc(card.get('generated', '?'))}: "
             + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
             + ") and links back to the check that measured it. Pages: [write-up](writeup.md) · "
               "[résumé](resume.md) · [history](history.md) · [interviews](interviews.md).", "",
             "| milestone | the seed's target | status | headline number |", "|---|---|---|---|"]
    for m in MILESTONES.values():
        mine = [r for r in rows if r["milestone"] == m.id]
        if not mine:
            lines.append(f"| [{m.id} {esc(m.title)}](milestones/{m.id}.md) | {esc(m.seed_target)} | not implemented | |")
            continue
        status, head = [], []
        for p in _profiles_of(mine):
            worst, h, passed, n = card_mod._grid_cells(rows, m.id, p)
            status.append(f"{badge(worst)} {passed}/{n} {esc(p)}")
            if h is not None and h.get("value") is not None:
                head.append(f"{esc(p)}: {measured_text(h)}")
            elif worst == "error" and card_mod.error_reason(h):  # e.g. a fixture that could not be fetched
                head.append(f"{esc(p)}: {esc(card_mod.error_reason(h))}")
        lines.append(f"| [{m.id} {esc(m.title)}](milestones/{m.id}.md) | {esc(m.seed_target)} | {'<br>'.join(status)} | "
                     f"{'<br>'.join(head)} |")
    return "\n".join(lines) + "\n"


def _extra_blocks(r: dict) -> list[str]:
    """A check's context: scalars in a table (numbers cite the record), Markdown samples (stories, before/after
    answers, tables) as written, structured values folded."""
    extra = r.get("extra") or {}
    scalars = [(k, v) for k, v in extra.items() if not isinstance(v, (dict, list)) and not (isinstance(v, str) and "\n" in v)]
    texts = [(k, v) for k, v in extra.items() if isinstance(v, str) and "\n" in v]
    structured = [(k, v) for k, v in extra.items() if isinstance(v, (dict, list))]
    out = []
    if scalars:
        out += ["| recorded | value |", "|---|---|"]
        out += [f"| {esc(k)} | {num(f'{row_id(r)}/extra:{k}', v) if is_number(v) else esc(fmt(v))} |" for k, v in scalars]
        out.append("")
    for k, v in texts:
        out += [f"**{esc(k)}**", "", md_text(v), ""]
    for k, v in structured:
        out += [f'<details><summary>{html.escape(k)}</summary><pre><code>'
                f'{html.escape(json.dumps(v, indent=1, default=str))}</code></pre></details>', ""]
    return out


def milestone_page(m, rows: list[dict], evidence: Evidence) -> str:
    mine = sorted([r for r in rows if r["milestone"] == m.id],
                  key=lambda r: (r["profile"] != "cpu", r["profile"], r.get("order", 99), r["check"]))
    lines = [f"# {m.id} · {esc(m.title)}", "", f"**The seed's target:** {esc(m.seed_target)}", ""]
    paths = code_paths(m.id)
    if not mine:
        lines += ["Not implemented yet: no acceptance check of this milestone has recorded a row.", ""]
    built = built_text(m.id)
    if built:
        lines += ["## What was built", "", built, ""]
    if paths:
        lines += ["**Where the code is:** " + ", ".join(f"`{p}`" for p in paths), ""]
    if mine:
        lines += ["## Checks", ""]
    for r in mine:
        lines += [f'<a id="{anchor(r)}"></a>', "", f"### {esc(card_mod._title(r))} ({esc(r['profile'])})", "",
                  f"{badge(r['status'])} **{measured_text(r)}**", "",
                  f"- **check:** `{esc(r['check'])}`",
                  f"- **profile and hardware:** {esc(r['profile'])} · {esc(r.get('hardware') or '-')}",
                  f"- **measured on:** {esc(card_mod.provenance(r) or '-')}",
                  f"- **data:** {esc(r.get('data') or '-')}",
                  f"- **protocol:** {esc(r.get('protocol') or '-')}"]
        if r.get("message") and r["status"] != "pass":
            lines.append(f"- **why not a pass:** {esc(r['message'][:600])}")
        if r.get("last_attempt"):
            lines.append(f"- **last attempted:** {esc(card_mod._attempt(r['last_attempt']))}")
        pts = [p for p in (r.get("curve") or []) if len(p) == 2 and is_number(p[1])]
        if len(pts) >= 2:
            lines.append(f"- **training loss:** {num(row_id(r) + '/curve:first', float(pts[0][1]))} at the first "
                         f"logged step, {num(row_id(r) + '/curve:last', float(pts[-1][1]))} at the last")
        lines.append("")
        plots = card_mod._gauge(r) + card_mod._curve_svg(r) + card_mod._bars_svg(r)
        if plots:
            lines += [f'<div class="plots">{plots}</div>', ""]
        lines += _extra_blocks(r)
    human = [h for h in evidence.human_evaluations if h.milestone == m.id]
    if human:
        lines += ["## Human evaluation", "", "Recorded by hand in the evidence file (not a scorecard record).", "",
                  "| date | evaluators | items | wins | losses | ties | protocol |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {h.date} | {esc(', '.join(h.evaluators))} | {h.items} | {h.wins} | {h.losses} | {h.ties} | "
                  f"{esc(h.protocol)} |" for h in human]
        lines.append("")
    return "\n".join(lines) + "\n"


def history_page(history: list[dict | None]) -> str:
    lines = ["# History", "", "Every row the suite has written, oldest first (`reports/history.jsonl`); the "
             "scorecard keeps the newest measured row of each check.", ""]
    entries = [(i, h) for i, h in enumerate(history) if h is not None]
    if not entries:
        return "\n".join(lines + ["No history recorded yet."]) + "\n"
    series: dict[tuple, list] = {}
    for i, h in entries:
        if is_number(h.get("value")) and h.get("status") in card_mod.MEASURED:
            series.setdefault((h["milestone"], h.get("check"), h.get("profile")), []).append((i, h))
    trends = [(k, s) for k, s in series.items() if len(s) >= 2]
    if trends:
        lines += ["## Checks measured more than once", "", "| milestone | check | profile | runs | first | latest |",
                  "|---|---|---|---|---|---|"]
        for (m, c, p), s in sorted(trends, key=lambda x: x[0]):
            (i0, h0), (i1, h1) = s[0], s[-1]
            lines.append(f"| {esc(m)} | {esc(c)} | {esc(p)} | {len(s)} | {num(f'history/{i0}/value', h0['value'])} "
                         f"({esc(h0.get('time', ''))}) | {num(f'history/{i1}/value', h1['value'])} ({esc(h1.get('time', ''))}) |")
        lines.append("")
    lines += ["## Every row", "", "| time | milestone | check | profile | status | value | target | host |",
              "|---|---|---|---|---|---|---|---|"]
    for i, h in entries:
        lines.append(f"| {esc(h.get('time', ''))} | {esc(h['milestone'])} | {esc(h.get('check', ''))} | "
                     f"{esc(h.get('profile', ''))} | {esc(h.get('status', ''))} | {num(f'history/{i}/value', h.get('value')) if is_number(h.get('value')) else ''} | "
                     f"{esc(card_mod._target(h))} | {esc(h.get('host') or '')} |")
    return "\n".join(lines) + "\n"


def writeup_page(card: dict, rows: list[dict]) -> str:
    """A technical write-up in which every sentence is one record's numbers: nothing without a row behind it."""
    lines = ["# Technical write-up: training LLMs on a fixed budget", "",
             "Generated from the scorecard; every number links to the check that measured it, and nothing here is "
             "claimed that no record backs. Hardware the numbers were measured on: "
             + "; ".join(sorted({esc(r.get('hardware')) for r in rows if r.get('hardware')})) + ".", ""]
    for m in MILESTONES.values():
        mine = sorted([r for r in rows if r["milestone"] == m.id], key=lambda r: (r["profile"] != "cpu", r.get("order", 99)))
        if not mine:
            continue
        lines += [f"## {m.id} · {esc(m.title)}", ""]
        for r in mine:
            link = f"[{esc(card_mod._title(r))}](milestones/{m.id}.md#{anchor(r)})"
            if r["status"] == "pass":
                s = f"- {link} ({esc(r['profile'])}): measured {measured_text(r)}: passed."
            elif r["status"] == "fail":
                s = f"- {link} ({esc(r['profile'])}): measured {measured_text(r)}: **missed**."
            elif r["status"] == "error":
                s = f"- {link} ({esc(r['profile'])}): broke before measuring ({esc((r.get('message') or '')[:200])})."
            else:
                s = f"- {link} ({esc(r['profile'])}): skipped ({esc((r.get('message') or '')[:200])})."
            extra = r.get("extra") or {}
            refs = [(k, v) for k, v in extra.items() if (k.startswith("baseline ") or k.startswith("trivial ")) and is_number(v)]
            if refs and r.get("status") in card_mod.MEASURED:
                s += " Against " + ", ".join(f"{esc(k)} {num(f'{row_id(r)}/extra:{k}', v)}" for k, v in refs) + "."
            pts = [p for p in (r.get("curve") or []) if len(p) == 2 and is_number(p[1])]
            if len(pts) >= 2:
                s += (f" Training loss went from {num(row_id(r) + '/curve:first', float(pts[0][1]))} to "
                      f"{num(row_id(r) + '/curve:last', float(pts[-1][1]))} over the logged steps.")
            lines.append(s)
        lines.append("")
    missing = [m for m in MILESTONES.values() if not any(r["milestone"] == m.id for r in rows)]
    if missing:
        lines += ["## Not yet done", "", ", ".join(f"{m.id} {esc(m.title)}" for m in missing) + ": no record yet.", ""]
    return "\n".join(lines) + "\n"


def resume_page(rows: list[dict]) -> str:
    passing = [r for r in rows if r["status"] == "pass" and r.get("value") is not None]
    lines = ["# Résumé bullets", "", "LLM algorithm engineer. Generated only from passing checks; each bullet links "
             "to its evidence.", ""]
    if not passing:
        return "\n".join(lines + ["No passing check yet."]) + "\n"
    for m in MILESTONES.values():
        mine = sorted([r for r in passing if r["milestone"] == m.id], key=lambda r: (r["profile"] != "cpu", r.get("order", 99)))
        if not mine:
            continue
        lines += [f"**{esc(m.title)}**", ""]
        lines += [f"- {esc(card_mod._title(r))}: {measured_text(r)} ({esc(r['profile'])} profile) — "
                  f"[evidence](milestones/{m.id}.md#{anchor(r)})" for r in mine]
        lines.append("")
    return "\n".join(lines) + "\n"


def interviews_page(evidence: Evidence, required: int, source: Path) -> str:
    n = len(evidence.interviews)
    lines = ["# Mock interviews", "", f"{n} of the {required} mock interviews the seed asks for are recorded "
             f"(in `{esc(source.name)}`, filled in by hand).", ""]
    for i, iv in enumerate(sorted(evidence.interviews, key=lambda x: x.date), 1):
        lines += [f"## Interview {i}: {iv.date} · {esc(iv.interviewer)}", "", f"**Role:** {esc(iv.role)}"
                  + (f" · **outcome:** {esc(iv.outcome)}" if iv.outcome else ""), "", "**Questions**", ""]
        lines += [f"1. {esc(q)}" for q in iv.questions]
        lines += ["", f"**Feedback:** {esc(iv.feedback)}", ""]
    return "\n".join(lines) + "\n"


# --- the build -------------------------------------------------------------------------------------------------------
def generate(card: dict, history: list, evidence: Evidence, required: int, evidence_path: Path, src: Path) -> None:
    """The MkDocs project: mkdocs.yml and docs/*.md."""
    rows = measured(card)
    docs = src / "docs"
    (docs / "milestones").mkdir(parents=True)
    pages = {"index.md": index_page(card, rows), "writeup.md": writeup_page(card, rows), "resume.md": resume_page(rows),
             "history.md": history_page(history), "interviews.md": interviews_page(evidence, required, evidence_path)}
    for m in MILESTONES.values():
        pages[f"milestones/{m.id}.md"] = milestone_page(m, rows, evidence)
    for name, text in pages.items():
        (docs / name).write_text(text)
    (docs / "portfolio.css").write_text(CSS)
    config = {
        "site_name": "LLM milestones portfolio", "docs_dir": "docs", "site_dir": str(src.parent / "site"),
        "use_directory_urls": False,  # pages open from disk (file://) as well as from any static host
        "strict": True,  # a link the generator got wrong fails the build
        "theme": {"name": "material", "font": False, "features": []},  # font: false: no Google Fonts request
        "plugins": [],  # no search: its web worker needs a server; nothing else loads from outside
        "extra": {"generator": False},  # no "made with" link off the site
        "extra_css": ["portfolio.css"],
        "markdown_extensions": ["tables", "attr_list", "md_in_html", {"toc": {"permalink": False}}],
        "validation": {"links": {"anchors": "warn", "unrecognized_links": "warn"}},
        "nav": [{"Home": "index.md"}, {"Write-up": "writeup.md"}, {"Résumé": "resume.md"},
                {"Milestones": [{f"{m.id} {m.title}": f"milestones/{m.id}.md"} for m in MILESTONES.values()]},
                {"History": "history.md"}, {"Interviews": "interviews.md"}],
    }
    (src / "mkdocs.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def mkdocs_build(config_file: Path) -> None:
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    logging.getLogger("mkdocs").setLevel(logging.WARNING)
    try:
        build(load_config(str(config_file)))
    except Abort as e:
        raise PortfolioInputError(f"mkdocs build of {config_file} failed: {e}") from None


def build(scorecard: Path, out: Path, interviews: Path, history: Path | None = None, required_interviews: int = 3) -> Site:
    """Build the site into a temporary directory beside `out`, then rename it into place: a failed build (bad
    scorecard, bad YAML, mkdocs error) leaves `out` as it was and no temporary directory behind."""
    card = load_card(scorecard)
    evidence = load_evidence(interviews)
    hist = load_history(history if history is not None else scorecard.with_name("history.jsonl"))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        src = work / "src"
        src.mkdir()
        generate(card, hist, evidence, required_interviews, interviews, src)
        # the records the pages cite, as read: the numbers check compares with these even if the live scorecard
        # moves on after the build
        (src / "scorecard.json").write_text(json.dumps(card, indent=1, default=str))
        (src / "history.jsonl").write_text("".join(json.dumps(h, default=str) + "\n" if h is not None else "null\n"
                                                   for h in hist))
        mkdocs_build(src / "mkdocs.yml")
        # 404.html links the site's root absolutely (/assets/...): it works only where a server puts the site at a
        # domain's root, and is broken on disk; the site has no other use for it
        (work / "site" / "404.html").unlink(missing_ok=True)
        shutil.move(str(src), str(work / "site" / SOURCE_DIR))
        if out.exists():
            os.replace(out, old)
        os.replace(work / "site", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    pages = sorted(str(p.relative_to(out)) for p in out.rglob("*.html") if SOURCE_DIR not in p.parts)
    text = "".join((out / p).read_text() for p in pages)
    return Site(out, pages, text.count('class="num"'), len(card["rows"]), evidence)
