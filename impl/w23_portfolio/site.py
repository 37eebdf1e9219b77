"""The portfolio site: a MkDocs (Material theme) project generated from reports/scorecard.json, its history and
the learner's evidence YAML, built offline into a temporary directory and renamed into place.

Every number a page prints from a record is marked up as `<span class="num" data-record="ADDRESS"
data-format="SPEC">…</span>` (`<tspan …>` inside a plot), where ADDRESS is a JSON list naming where the number was
read (see `resolve`): `["row", milestone, check, profile, *path]` (a field of a scorecard row, e.g. `"value"`,
`"extra", "value per seed", "0"` or `"curve", 3, 1`), `["history", line, *path]` (a line of history.jsonl), or
`["count", "rows" | "history", {field: [allowed values]}]` (how many rows match, e.g. the index's "2/3"), and
SPEC is the format it was printed with. The build records in `_mkdocs/numbers.json` which scorecard it read and
how many such numbers it printed on each page; `check.numbers_mismatched` formats each record again and compares
the text, and counts them per page, so a number edited, removed or turned into plain text is caught. Text from
a record (messages, protocols, hardware, times) is quoted as text, not parsed for numbers; the interviews and
human evaluations come from the evidence YAML, not from a record.

Pages: the index (every milestone's status and headline number against the seed's target), one page per
milestone, the history, a write-up generated from the measured numbers, the résumé bullets (passing rows only,
each linked to its evidence) and the interviews.
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
from impl.w23_portfolio.evidence import Evidence, PortfolioInputError, distinct_interviews, load_evidence

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = "_mkdocs"  # the generated MkDocs project, kept beside the pages it built
NUMBERS_MANIFEST = "numbers.json"  # in SOURCE_DIR: the scorecard read and the numbers printed per page
NUMBER_MARKUP = re.compile(r'<(span|tspan) class="num" data-record="([^"]*)" data-format="([^"]*)">([^<]*)</\1>')
CSS = """.num{font-variant-numeric:tabular-nums}.badge{color:#fff;border-radius:3px;padding:1px 6px;font-size:.7rem;
text-transform:uppercase}.plots svg{margin-right:1em;vertical-align:top;max-width:100%}.md-typeset table:not([class]){font-size:.7rem}
"""


@dataclass
class Site:
    path: Path
    pages: list[str] = field(default_factory=list)  # html files, relative to path
    numbers: int = 0  # numbers printed from records, all pages together
    rows: int = 0
    evidence: Evidence = field(default_factory=Evidence)
    source: Path | None = None  # the scorecard.json it was built from
    printed: dict[str, int] = field(default_factory=dict)  # page -> numbers printed from records


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


# --- numbers: printed with the address of the record they were read from ------------------------------------------
is_number = card_mod.is_number


def num(address: list, value, spec: str = ".4g", tag: str = "span") -> str:
    """A number read from a record, marked up with where it was read and how it was formatted (`tag` tspan
    inside SVG text). Anything that is not a number is printed as escaped text."""
    if not is_number(value):
        return html.escape(card_mod.format_value(value))
    return (f'<{tag} class="num" data-record="{html.escape(json.dumps(address, separators=(",", ":")), quote=True)}" '
            f'data-format="{html.escape(spec, quote=True)}">{html.escape(card_mod.format_number(value, spec))}</{tag}>')


def cite(r: dict, tag: str = "span") -> card_mod.Number:
    """The scorecard's `Number` printer for row `r`: each number marked up with its path in the row."""
    def number(path: tuple, value, spec: str = ".4g") -> str:
        return num(["row", r["milestone"], r["check"], r["profile"], *path], value, spec, tag)
    return number


def cite_history(line: int) -> card_mod.Number:
    def number(path: tuple, value, spec: str = ".4g") -> str:
        return num(["history", line, *path], value, spec)
    return number


def count(source: str, where: dict[str, list], n: int) -> str:
    """How many scorecard rows (or history entries) match `where` (field -> allowed values), marked up."""
    return num(["count", source, where], n)


def _walk(record, path: list):
    for key in path:
        record = record[int(key)] if isinstance(record, list) else record[key]
    return record


def resolve(address: list, card: dict, history: list[dict | None]):
    """The value an address cites (see the module's docstring); KeyError, IndexError, TypeError, ValueError or
    AttributeError when it cites nothing."""
    kind, *rest = address
    if kind == "row":
        milestone, check, profile, *path = rest
        matches = [r for r in card["rows"] if (r["milestone"], r["check"], r["profile"]) == (milestone, check, profile)]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} rows {milestone}/{check}/{profile}")
        return _walk(matches[0], path)
    if kind == "history":
        line, *path = rest
        if not isinstance(line, int) or line < 0 or history[line] is None:
            raise KeyError(f"history line {line}")
        return _walk(history[line], path)
    if kind == "count":
        source, where = rest
        entries = {"rows": card["rows"], "history": [h for h in history if h is not None]}[source]
        return sum(all(e.get(f) in allowed for f, allowed in where.items()) for e in entries)
    raise KeyError(f"no kind of record named {kind!r}")


def json_html(value, number: card_mod.Number, path: tuple = (), depth: int = 0) -> str:
    """`value` laid out as indented JSON, its numbers printed by `number` (with their path) and the rest escaped."""
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{html.escape(json.dumps(str(k)))}: {json_html(v, number, (*path, str(k)), depth + 1)}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and value:
        items = [f"{inner}{json_html(v, number, (*path, i), depth + 1)}" for i, v in enumerate(value)]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    if is_number(value):
        return number(path, value, ".4g")
    return html.escape(json.dumps(value, default=str))


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


def anchor(r: dict) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{r['profile']}-{r['check']}")


def measured_text(r: dict) -> str:
    metric, target = esc(r.get("metric") or "value"), card_mod.target_html(r, cite(r))
    if r.get("value") is None:
        return f"{metric} not measured" + (f", target {target}" if target else "")
    return f"{metric} = {cite(r)(('value',), r['value'])}, target {target}"


def training_loss(r: dict) -> tuple[str, str] | None:
    """The first and last logged training loss, marked up, or None without a curve."""
    pts = card_mod.curve_points(r)
    if len(pts) < 2:
        return None
    first, last = pts[0][0], pts[-1][0]
    return (cite(r)(("curve", first, 1), r["curve"][first][1]), cite(r)(("curve", last, 1), r["curve"][last][1]))


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


def _status_cell(rows: list[dict], milestone: str, profile: str) -> tuple[str, str | None]:
    """A milestone's status under one profile (badge, checks passed of checks) and its headline, for the index."""
    cell = card_mod.grid_cell(rows, milestone, profile)
    where = {"milestone": [milestone], "profile": [profile]}
    status = (f"{card_mod.badge_html(cell.status)} {count('rows', {**where, 'status': ['pass']}, cell.passed)}/"
              f"{count('rows', where, cell.total)} {esc(profile)}")
    if cell.head is not None and cell.head.get("value") is not None:
        headline = card_mod.headline_html(cell.head, cite(cell.head))  # the seed's quantities, then the gate
        return status, f"{esc(profile)}: " + (f"{headline}; " if headline else "") + measured_text(cell.head)
    if cell.status == "error" and card_mod.error_reason(cell.head):  # e.g. a fixture that could not be fetched
        return status, f"{esc(profile)}: {esc(card_mod.error_reason(cell.head))}"
    return status, None


def index_page(card: dict, rows: list[dict]) -> str:
    counts = card_mod.status_counts(card["rows"])
    lines = ["# LLM milestones portfolio", "",
             f"Every number on these pages is read from the suite's scorecard (generated {esc(card.get('generated', '?'))}: "
             + ", ".join(f"{count('rows', {'status': [s]}, n)} {s}" for s, n in counts.items() if n)
             + ") and links back to the check that measured it. Pages: [write-up](writeup.md) · "
               "[résumé](resume.md) · [history](history.md) · [interviews](interviews.md).", "",
             "| milestone | the seed's target | status | headline number |", "|---|---|---|---|"]
    for m in MILESTONES.values():
        mine = [r for r in rows if r["milestone"] == m.id]
        if not mine:
            lines.append(f"| [{m.id} {esc(m.title)}](milestones/{m.id}.md) | {esc(m.seed_target)} | not implemented | |")
            continue
        cells = [_status_cell(rows, m.id, p) for p in card_mod.profiles_of(mine)]
        status, head = [c[0] for c in cells], [c[1] for c in cells if c[1]]
        lines.append(f"| [{m.id} {esc(m.title)}](milestones/{m.id}.md) | {esc(m.seed_target)} | {'<br>'.join(status)} | "
                     f"{'<br>'.join(head)} |")
    return "\n".join(lines) + "\n"


def _extra_blocks(r: dict) -> list[str]:
    """A check's context: scalars in a table, Markdown samples (stories, before/after answers, tables) as written,
    structured values (per-seed values, scores by model) folded as JSON; every number cites its record."""
    extra = r.get("extra") or {}
    scalars = [(k, v) for k, v in extra.items() if not isinstance(v, (dict, list)) and not (isinstance(v, str) and "\n" in v)]
    texts = [(k, v) for k, v in extra.items() if isinstance(v, str) and "\n" in v]
    structured = [(k, v) for k, v in extra.items() if isinstance(v, (dict, list))]
    out = []
    if scalars:
        out += ["| recorded | value |", "|---|---|"]
        out += [f"| {esc(k)} | {cite(r)(('extra', k), v) if is_number(v) else esc(card_mod.format_value(v))} |"
                for k, v in scalars]
        out.append("")
    for k, v in texts:
        out += [f"**{esc(k)}**", "", md_text(v), ""]
    for k, v in structured:
        out += [f'<details><summary>{html.escape(k)}</summary><pre><code>'
                f'{json_html(v, cite(r), ("extra", k))}</code></pre></details>', ""]
    return out


def _check_section(r: dict) -> list[str]:
    lines = [f'<a id="{anchor(r)}"></a>', "", f"### {esc(card_mod.check_title(r))} ({esc(r['profile'])})", "",
             f"{card_mod.badge_html(r['status'])} **{measured_text(r)}**", "",
             f"- **check:** `{esc(r['check'])}`",
             f"- **profile and hardware:** {esc(r['profile'])} · {esc(r.get('hardware') or '-')}",
             f"- **measured on:** {esc(card_mod.provenance(r) or '-')}",
             f"- **data:** {esc(r.get('data') or '-')}",
             f"- **protocol:** {esc(r.get('protocol') or '-')}"]
    if r.get("message") and r["status"] != "pass":
        lines.append(f"- **why not a pass:** {esc(r['message'][:600])}")
    if r.get("last_attempt"):
        lines.append(f"- **last attempted:** {esc(card_mod.attempt_text(r['last_attempt']))}")
    loss = training_loss(r)
    if loss:
        lines.append(f"- **training loss:** {loss[0]} at the first logged step, {loss[1]} at the last")
    lines.append("")
    plots = card_mod.plots_svg(r, cite(r, "tspan"))
    if plots:
        lines += [f'<div class="plots">{plots}</div>', ""]
    return lines + _extra_blocks(r)


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
        lines += _check_section(r)
    human = [h for h in evidence.human_evaluations if h.milestone == m.id]
    if human:
        lines += ["## Human evaluation", "", "Recorded by hand in the evidence file (not a scorecard record).", "",
                  "| date | evaluators | items | wins | losses | ties | protocol |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {h.date} | {esc(', '.join(h.evaluators))} | {h.items} | {h.wins} | {h.losses} | {h.ties} | "
                  f"{esc(h.protocol)} |" for h in human]
        lines.append("")
    return "\n".join(lines) + "\n"


def _trends(entries: list[tuple[int, dict]]) -> list[str]:
    """Checks measured more than once: how often, the first and the latest value (errors and skips measured
    nothing, so they are no point of a trend)."""
    series: dict[tuple, list] = {}
    for i, h in entries:
        if h.get("status") in card_mod.MEASURED:
            series.setdefault((h["milestone"], h.get("check"), h.get("profile")), []).append((i, h))
    trends = sorted(((k, s) for k, s in series.items() if len(s) >= 2), key=lambda x: [str(p) for p in x[0]])
    if not trends:
        return []
    lines = ["## Checks measured more than once", "", "| milestone | check | profile | runs | first | latest |",
             "|---|---|---|---|---|---|"]
    for (m, c, p), s in trends:
        (i0, h0), (i1, h1) = s[0], s[-1]
        runs = count("history", {"milestone": [m], "check": [c], "profile": [p], "status": list(card_mod.MEASURED)},
                     len(s))
        lines.append(f"| {esc(m)} | {esc(c)} | {esc(p)} | {runs} | {cite_history(i0)(('value',), h0.get('value'))} "
                     f"({esc(h0.get('time', ''))}) | {cite_history(i1)(('value',), h1.get('value'))} "
                     f"({esc(h1.get('time', ''))}) |")
    return lines + [""]


def history_page(history: list[dict | None]) -> str:
    lines = ["# History", "", "Every row the suite has written, oldest first (`reports/history.jsonl`); the "
             "scorecard keeps the newest outcome of each check.", ""]
    entries = [(i, h) for i, h in enumerate(history) if h is not None]
    if not entries:
        return "\n".join(lines + ["No history recorded yet."]) + "\n"
    lines += _trends(entries)
    lines += ["## Every row", "", "| time | milestone | check | profile | status | value | target | host |",
              "|---|---|---|---|---|---|---|---|"]
    for i, h in entries:
        value = cite_history(i)(("value",), h["value"]) if is_number(h.get("value")) else ""
        lines.append(f"| {esc(h.get('time', ''))} | {esc(h['milestone'])} | {esc(h.get('check', ''))} | "
                     f"{esc(h.get('profile', ''))} | {esc(h.get('status', ''))} | {value} | "
                     f"{card_mod.target_html(h, cite_history(i))} | "
                     f"{esc(h.get('host') or '')} |")
    return "\n".join(lines) + "\n"


def _writeup_sentence(r: dict) -> str:
    link = f"[{esc(card_mod.check_title(r))}](milestones/{r['milestone']}.md#{anchor(r)})"
    why = esc((r.get("message") or "")[:200])
    s = {"pass": f"measured {measured_text(r)}: passed.", "fail": f"measured {measured_text(r)}: **missed**.",
         "error": f"broke before measuring ({why})."}.get(r["status"], f"skipped ({why}).")
    s = f"- {link} ({esc(r['profile'])}): {s}"
    extra = r.get("extra") or {}
    refs = [(k, v) for k, v in extra.items() if (k.startswith("baseline ") or k.startswith("trivial ")) and is_number(v)]
    if refs and r.get("status") in card_mod.MEASURED:
        s += " Against " + ", ".join(f"{esc(k)} {cite(r)(('extra', k), v)}" for k, v in refs) + "."
    loss = training_loss(r)
    if loss:
        s += f" Training loss went from {loss[0]} to {loss[1]} over the logged steps."
    return s


def writeup_page(card: dict, rows: list[dict]) -> str:
    """A technical write-up in which every sentence is one record's numbers: nothing without a row behind it."""
    lines = ["# Technical write-up: training LLMs on a fixed budget", "",
             "Generated from the scorecard; every number links to the check that measured it, and nothing here is "
             "claimed that no record backs. Hardware the numbers were measured on: "
             + "; ".join(sorted({esc(r.get('hardware')) for r in rows if r.get('hardware')})) + ".", ""]
    for m in MILESTONES.values():
        mine = sorted([r for r in rows if r["milestone"] == m.id], key=lambda r: (r["profile"] != "cpu", r.get("order", 99)))
        if mine:
            lines += [f"## {m.id} · {esc(m.title)}", "", *map(_writeup_sentence, mine), ""]
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
        lines += [f"- {esc(card_mod.check_title(r))}: {measured_text(r)} ({esc(r['profile'])} profile) — "
                  f"[evidence](milestones/{m.id}.md#{anchor(r)})" for r in mine]
        lines.append("")
    return "\n".join(lines) + "\n"


def interviews_page(evidence: Evidence, required: int, source: Path) -> str:
    interviews = distinct_interviews(evidence)
    repeated = len(evidence.interviews) - len(interviews)
    lines = ["# Mock interviews", "", f"{len(interviews)} of the {required} mock interviews the seed asks for are "
             f"recorded (in `{esc(source.name)}`, filled in by hand"
             + (f"; {repeated} identical repeated entries counted once" if repeated else "") + ").", ""]
    for i, iv in enumerate(sorted(interviews, key=lambda x: x.date), 1):
        lines += [f"## Interview {i}: {iv.date} · {esc(iv.interviewer)}", "", f"**Role:** {esc(iv.role)}"
                  + (f" · **outcome:** {esc(iv.outcome)}" if iv.outcome else ""), "", "**Questions**", ""]
        lines += [f"1. {esc(q)}" for q in iv.questions]
        lines += ["", f"**Feedback:** {esc(iv.feedback)}", ""]
    return "\n".join(lines) + "\n"


# --- the build -------------------------------------------------------------------------------------------------------
def html_name(markdown_name: str) -> str:
    return markdown_name.removesuffix(".md") + ".html"  # use_directory_urls is off: page.md -> page.html


def generate(card: dict, history: list, evidence: Evidence, required: int, evidence_path: Path, src: Path) -> dict[str, int]:
    """The MkDocs project: mkdocs.yml and docs/*.md. Returns how many numbers from records each page prints
    (counted in the Markdown it wrote, before MkDocs renders it)."""
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
    return {html_name(name): len(NUMBER_MARKUP.findall(text)) for name, text in pages.items()}


def mkdocs_build(config_file: Path) -> None:
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    logging.getLogger("mkdocs").setLevel(logging.WARNING)
    try:
        build(load_config(str(config_file)))
    except Abort as e:
        raise PortfolioInputError(f"mkdocs build of {config_file} failed: {e}") from None


def printed_numbers(site: Path) -> dict:
    """The build's record of what it printed: {"scorecard": path, "history": path or None, "pages": {page: n}}."""
    path = Path(site) / SOURCE_DIR / NUMBERS_MANIFEST
    try:
        manifest = json.loads(path.read_text())
        assert isinstance(manifest.get("pages"), dict)
        return manifest
    except (OSError, ValueError, AssertionError):
        raise PortfolioInputError(f"{path} is missing or unreadable: the site was not built by this version "
                                  f"(rebuild it: python -m impl portfolio)") from None


def build(scorecard: Path, out: Path, interviews: Path, history: Path | None = None, required_interviews: int = 3) -> Site:
    """Build the site into a temporary directory beside `out`, then rename it into place: a failed build (bad
    scorecard, bad YAML, mkdocs error) leaves `out` as it was and no temporary directory behind."""
    scorecard = Path(scorecard).resolve()
    history = history if history is not None else scorecard.with_name("history.jsonl")
    card = load_card(scorecard)
    evidence = load_evidence(interviews)
    hist = load_history(history)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        src = work / "src"
        src.mkdir()
        printed = generate(card, hist, evidence, required_interviews, interviews, src)
        # the records the pages cite, as read (to reproduce the build); the numbers check reads the scorecard
        # named in the manifest, outside the published site
        (src / "scorecard.json").write_text(json.dumps(card, indent=1, default=str))
        (src / "history.jsonl").write_text("".join(json.dumps(h, default=str) + "\n" if h is not None else "null\n"
                                                   for h in hist))
        (src / NUMBERS_MANIFEST).write_text(json.dumps(
            {"scorecard": str(scorecard), "history": str(Path(history).resolve()) if Path(history).exists() else None,
             "pages": printed}, indent=1))
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
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html") if SOURCE_DIR not in p.parts)
    return Site(out, pages, sum(printed.values()), len(card["rows"]), evidence, scorecard, printed)
