"""The pass/fail scorecard: reports/scorecard.{json,md,html} and reports/history.jsonl.

Rows arrive one per acceptance check (from the pytest plugin in conftest.py, under xdist from every worker),
are merged with the rows of earlier sessions and of other machines (`python -m impl report --merge DIR`): per
milestone/check/profile the newest outcome stays (a measurement, pass or fail, or an error: the check broke), and a
later skip is shown beside it as the last attempt instead of replacing it; every milestone without a row is listed
as not-implemented. Each row says where it was measured (host, hardware, commit, time). `python -m impl report`
rebuilds md and html from json; history.jsonl keeps every row ever written. The rendering API below (numbers,
targets, grid cells, titles, plots) is shared with w23's portfolio site.
"""
from __future__ import annotations

import html
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

from impl.core.registry import MILESTONES

ROOT = Path(__file__).resolve().parents[2]
STATUSES = ("pass", "fail", "skip", "error", "not-implemented")


def reports_dir() -> Path:
    return Path(os.environ.get("LLM_MILESTONES_REPORTS", ROOT / "reports"))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _key(row: dict) -> tuple:
    return row["milestone"], row["check"], row["profile"]


MEASURED = ("pass", "fail")  # a value was measured and judged against its target
# what a run that reached the check found: a measurement, or the check broke (a crash, a missing fixture). An error
# is not a measurement (its value, if any, was never judged), but it is news: it replaces an older measurement, so
# the grid shows the reason instead of evidence the current code or machine can no longer reproduce (the older
# row stays in history.jsonl). A skip is neither: it never replaces an outcome.
OUTCOMES = (*MEASURED, "error")


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """The scorecard's rows after `new` arrives: the newest outcome per key wins (by its time, so reports merged
    from other machines fall into place); a skip never replaces an outcome, it is kept as that row's
    `last_attempt`."""
    rows = {_key(r): r for r in old if r["status"] != "not-implemented"}
    for r in new:
        if r["status"] == "not-implemented":
            continue
        k, prev = _key(r), rows.get(_key(r))
        newer = prev is None or r.get("time", "") >= prev.get("time", "")
        if prev is None:
            rows[k] = r
        elif r["status"] in OUTCOMES:
            if prev["status"] not in OUTCOMES or newer:
                rows[k] = r
        elif prev["status"] in OUTCOMES:  # a skip (or anything without an outcome) after one: note it, keep it
            if newer:
                rows[k] = {**prev, "last_attempt": {f: r.get(f) for f in ("status", "message", "time", "host", "hardware")}}
        elif newer:
            rows[k] = r
    covered = {r["milestone"] for r in rows.values()}
    for m in MILESTONES.values():
        if m.id not in covered:
            rows[(m.id, "-", "-")] = {"milestone": m.id, "check": m.title, "profile": "-",
                                      "status": "not-implemented", "metric": None, "direction": None,
                                      "target": None, "value": None, "protocol": m.seed_target}
    return sorted(rows.values(), key=lambda r: (r["milestone"], r["profile"], r["check"]))


def write(new_rows: list[dict], out: Path | None = None) -> Path:
    """Merge `new_rows` into the scorecard, write all three forms and append them to the history."""
    out = out or reports_dir()
    out.mkdir(parents=True, exist_ok=True)
    old = load(out)["rows"] if (out / "scorecard.json").exists() else []
    card = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": merge_rows(old, new_rows)}
    _atomic_write(out / "scorecard.json", json.dumps(card, indent=1, default=str))
    render(card, out)
    seen = _history_keys(out / "history.jsonl")
    with open(out / "history.jsonl", "a") as f:
        for row in new_rows:
            key = _history_key(row)
            if key in seen:
                continue  # the same measurement again (a report merged twice): the history keeps it once
            seen.add(key)
            f.write(json.dumps({k: v for k, v in row.items() if k != "curve"}, default=str) + "\n")
    return out / "scorecard.json"


def _history_key(row: dict) -> str:
    """One measurement: which check, where, when, and what it found."""
    return json.dumps([row.get(k) for k in ("milestone", "check", "profile", "status", "value", "time", "host",
                                             "commit")], default=str)


def _history_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    keys = set()
    with open(path) as f:
        for line in f:
            try:
                keys.add(_history_key(json.loads(line)))
            except ValueError:
                continue  # a line cut short by a crash is not a measurement
    return keys


def merge(paths: list[Path], out: Path | None = None) -> tuple[Path, int]:
    """Fold the scorecards of other machines (a reports/ directory or a scorecard.json each, e.g. the nightly GPU
    job's uploaded artifact) into this one; returns the scorecard path and how many rows came in."""
    incoming = []
    for p in paths:
        card = p / "scorecard.json" if p.is_dir() else p
        if not card.exists():
            raise FileNotFoundError(f"{card} does not exist: pass a reports/ directory or a scorecard.json")
        try:
            rows = json.loads(card.read_text())["rows"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{card} is not a scorecard: {e}") from None
        incoming += [r for r in rows if r.get("status") != "not-implemented"]
    return write(incoming, out), len(incoming)


def provenance(row: dict) -> str:
    """Where, when and on whose code a row was measured, in one line."""
    parts = [row.get("host"), row.get("hardware"), f"commit {row['commit']}" if row.get("commit") else None,
             row.get("time"), f"code: {code_of(row)}" if row.get("implementation") else None]
    return ", ".join(p for p in parts if p)


def code_of(row: dict) -> str:
    """Whose code a row measured: 'reference implementation', or the learner's package, its commit and units."""
    from impl.units import summary

    return summary(row.get("implementation") or {})


def learners(rows: list[dict]) -> list[dict]:
    """The rows measured on a learner's package (not the reference)."""
    return [r for r in rows if (r.get("implementation") or {}).get("implementation", "reference") != "reference"]


def load(out: Path | None = None) -> dict:
    path = (out or reports_dir()) / "scorecard.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the acceptance suite first (pytest acceptance)")
    return json.loads(path.read_text())


def render(card: dict, out: Path) -> None:
    _atomic_write(out / "scorecard.md", markdown(card))
    _atomic_write(out / "scorecard.html", html_page(_images_inlined(card, out)))


def _images_inlined(card: dict, base: Path) -> dict:
    """The HTML page is self-contained: a PNG the rows name beside the report (w23's screenshot) goes in as a
    data URI; the JSON and Markdown keep the path."""
    import base64

    rows = []
    for r in card["rows"]:
        extra = dict(r.get("extra") or {})
        for k, v in extra.items():
            if _is_image(v) and not v.startswith("data:") and (base / v).is_file():
                extra[k] = "data:image/png;base64," + base64.b64encode((base / v).read_bytes()).decode()
        rows.append({**r, "extra": extra} if r.get("extra") else r)
    return {**card, "rows": rows}


# --- the rendering API: the scorecard's own pages and w23's portfolio site draw rows with these ------------------
# A `Number` prints one number of a row: (its path in the row, e.g. ("target",) or ("curve", 3, 1); the value; the
# format spec) -> HTML. The scorecard prints plain text; the site prints the same text marked up with the record
# it came from, so its checker can compare each one with the scorecard.
Number = Callable[[tuple, object, str], str]


def is_number(v) -> bool:
    """A number a record holds (NaN included: it is printed, as "nan"); a bool is not one."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def format_number(v, spec: str = ".4g") -> str:
    """A record's number as every page prints it: an int exactly (counts, steps, sizes), a float by `spec` (4
    significant digits unless a plot's axis says otherwise)."""
    if not is_number(v):
        raise TypeError(f"not a number: {v!r}")
    return str(v) if isinstance(v, int) else format(v, spec)


def format_value(v) -> str:
    """A record's field as text: a number by format_number, None as nothing, anything else as it is."""
    if v is None:
        return ""
    return format_number(v) if is_number(v) else str(v)


def plain_number(path: tuple, value, spec: str = ".4g") -> str:
    return html.escape(format_number(value, spec))


def attempt_text(a: dict) -> str:
    return f"{a.get('status')} on {', '.join(x for x in (a.get('host'), a.get('time')) if x)}: {a.get('message') or ''}"


def _comparison(row: dict) -> str:
    return "<" if row.get("direction") == "lower" else ">"


def target_text(row: dict) -> str:
    """The target as plain text (Markdown tables, the terminal): `< 280`."""
    return "" if row.get("target") is None else f"{_comparison(row)} {format_value(row['target'])}"


def headline_html(row: dict, number: Number = plain_number) -> str:
    """The quantities the seed's sentence names, as the check recorded them (`headline`: name -> value, e.g. RAG F1
    with closed-book and oracle beside it), for the grid's cell; "" when the check recorded none (its gated value
    is the headline then)."""
    head = (row.get("extra") or {}).get("headline")
    if not isinstance(head, dict) or not head:
        return ""
    return ", ".join(f"{html.escape(str(k))} " + (number(("extra", "headline", k), v) if is_number(v)
                                                  else html.escape(str(v))) for k, v in head.items())


def target_html(row: dict, number: Number = plain_number) -> str:
    """The target as HTML, its threshold printed by `number`."""
    t = row.get("target")
    if t is None:
        return ""
    return f"{html.escape(_comparison(row))} {number(('target',), t, '.4g') if is_number(t) else html.escape(str(t))}"


def profiles_of(rows: list[dict]) -> list[str]:
    """The profiles the rows were measured under, cpu first."""
    return sorted({r["profile"] for r in rows if r["status"] != "not-implemented"}, key=lambda p: (p != "cpu", p))


def status_counts(rows: list[dict]) -> dict[str, int]:
    return {s: sum(r["status"] == s for r in rows) for s in STATUSES}


def _first(row: dict) -> tuple:
    """The profile lists a milestone's headline target first; rows keep that order."""
    return row.get("order", 99), row["check"]


class GridCell(NamedTuple):
    """One milestone under one profile: the worst status, the headline row, checks passed, checks."""
    status: str
    head: dict | None
    passed: int
    total: int


def grid_cell(rows: list[dict], milestone: str, profile: str) -> GridCell:
    mine = [r for r in rows if r["milestone"] == milestone and r["profile"] == profile]
    if not mine:
        return GridCell("-", None, 0, 0)
    worst = min(mine, key=lambda r: (WORST_FIRST.index(r["status"]) if r["status"] in WORST_FIRST else 9, *_first(r)))
    head = worst if worst["status"] not in ("skip", "pass") else min(mine, key=_first)
    return GridCell(worst["status"], head, sum(r["status"] == "pass" for r in mine), len(mine))


def error_reason(head: dict | None) -> str:
    """Why a cell is ERROR, in one line (a missing fixture names itself and the command that fetches it)."""
    if not head or head.get("status") != "error" or not head.get("message"):
        return ""
    line = head["message"].strip().splitlines()[0]
    return line if len(line) <= 200 else line[:197] + "..."


STATUS_COLOUR = {"pass": "#2e7d32", "fail": "#c62828", "error": "#d84315", "skip": "#757575",
                 "not-implemented": "#9e9e9e"}
WORST_FIRST = ("error", "fail", "skip", "pass")


def badge_html(status: str) -> str:
    return f"<span class='badge' style='background:{STATUS_COLOUR.get(status, '#757575')}'>{html.escape(status)}</span>"


def check_title(row: dict) -> str:
    """The check in words: its docstring's first line, else its function name."""
    if row.get("title"):
        return row["title"]
    words = row["check"].removeprefix("test_").replace("_", " ")
    return words[:1].upper() + words[1:]


LOG_NOTE = "<text x='350' y='50' font-size='9' text-anchor='end'>log scale</text>"


def gauge_svg(row: dict, number: Number = plain_number) -> str:
    """Measured against target on one axis: the passing side green, the failing side red, the value a marker;
    a log axis when value and threshold are positive and far apart. Numbers only in its text (no aria-label
    copies), so every printed number goes through `number`."""
    v, t = row.get("value"), row.get("target")
    if not is_number(v) or not is_number(t) or v != v:
        return ""
    import math

    log = v > 0 and t > 0 and max(v, t) / min(v, t) > 50
    f = (lambda x: math.log10(x)) if log else (lambda x: x)
    lo, hi = min(f(v), f(t)), max(f(v), f(t))
    span = (hi - lo) or abs(hi) or 1.0
    lo, hi = lo - 0.25 * span, hi + 0.25 * span
    width, x = 360, (lambda val: 10 + 340 * (f(val) - lo) / (hi - lo))
    tx, vx = x(t), x(v)
    good_left = row.get("direction") == "lower"
    green = (10, tx) if good_left else (tx, 350)
    red = (tx, 350) if good_left else (10, tx)
    colour = STATUS_COLOUR["pass"] if row["status"] == "pass" else STATUS_COLOUR["fail"]
    return (f"<svg class='gauge' width='{width}' height='54' role='group' "
            f"aria-label='{html.escape(row.get('metric') or 'value', quote=True)} against its target'>"
            f"<rect x='{green[0]:.1f}' y='18' width='{green[1] - green[0]:.1f}' height='12' fill='#c8e6c9'/>"
            f"<rect x='{red[0]:.1f}' y='18' width='{red[1] - red[0]:.1f}' height='12' fill='#ffcdd2'/>"
            f"<line x1='{tx:.1f}' x2='{tx:.1f}' y1='12' y2='36' stroke='#000' stroke-dasharray='3,2'/>"
            f"<text x='{tx:.1f}' y='50' font-size='10' text-anchor='middle'>target {target_html(row, number)}</text>"
            f"<circle cx='{vx:.1f}' cy='24' r='6' fill='{colour}'/>"
            f"<text x='{vx:.1f}' y='11' font-size='10' text-anchor='middle'>{number(('value',), v, '.4g')}</text>"
            + (LOG_NOTE if log else "") + "</svg>")


def curve_points(row: dict) -> list[tuple[int, float, float]]:
    """The training curve's logged points as (index in the row's curve, step, loss), NaN losses left out."""
    out = []
    for i, p in enumerate(row.get("curve") or []):
        if len(p) == 2 and is_number(p[0]) and is_number(p[1]) and p[1] == p[1]:
            out.append((i, float(p[0]), float(p[1])))
    return out


def curve_svg(row: dict, number: Number = plain_number) -> str:
    """This run's own training curve; its axis labels are the curve's own first and last step, lowest and highest
    loss."""
    pts = curve_points(row)
    if len(pts) < 2:
        return ""
    first, last = pts[0], pts[-1]
    low, high = min(pts, key=lambda p: p[2]), max(pts, key=lambda p: p[2])
    (x0, x1), (y0, y1) = (first[1], last[1]), (low[2], high[2])
    curve = row["curve"]
    label = lambda p, axis, spec: number(("curve", p[0], axis), curve[p[0]][axis], spec)  # noqa: E731
    w, h = 360, 120
    sx = lambda v: 40 + (w - 50) * (v - x0) / ((x1 - x0) or 1)  # noqa: E731
    sy = lambda v: 10 + (h - 30) * (1 - (v - y0) / ((y1 - y0) or 1))  # noqa: E731
    line = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for _, a, b in pts)
    return (f"<svg class='curve' width='{w}' height='{h}' role='group' aria-label='training loss'>"
            f"<polyline points='{line}' fill='none' stroke='#1565c0' stroke-width='1.5'/>"
            f"<line x1='40' x2='40' y1='10' y2='{h - 20}' stroke='#999'/>"
            f"<line x1='40' x2='{w - 10}' y1='{h - 20}' y2='{h - 20}' stroke='#999'/>"
            f"<text x='36' y='14' font-size='9' text-anchor='end'>{label(high, 1, '.3g')}</text>"
            f"<text x='36' y='{h - 20}' font-size='9' text-anchor='end'>{label(low, 1, '.3g')}</text>"
            f"<text x='40' y='{h - 6}' font-size='9'>step {label(first, 0, 'g')}</text>"
            f"<text x='{w - 10}' y='{h - 6}' font-size='9' text-anchor='end'>{label(last, 0, 'g')}</text>"
            f"<text x='{w / 2:.0f}' y='{h - 6}' font-size='9' text-anchor='middle'>training loss</text></svg>")


BAR_COLOURS = ["#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f"]
SCORES = "scores by model"


def bars_svg(row: dict, number: Number = plain_number) -> str:
    """A grouped bar chart of a check's `scores by model` (model -> group -> value in [0, 1], e.g. per-task
    accuracies): one group per task, one bar per model, a legend; each bar's value in its tooltip."""
    scores = (row.get("extra") or {}).get(SCORES)
    if not isinstance(scores, dict) or not scores:
        return ""
    models = list(scores)
    groups = list(dict.fromkeys(g for m in models for g in scores[m]))
    cells = [(m, g, v) for m in models for g, v in scores[m].items() if is_number(v) and v == v]
    highest = max(cells, key=lambda c: c[2], default=None)
    top = highest[2] if highest and highest[2] > 1 else 1.0
    top_label = number(("extra", SCORES, highest[0], highest[1]), highest[2], "g") if top != 1.0 else "1"
    bar, gap, h, left = 10, 14, 150, 34
    gw = bar * len(models) + gap
    w = left + gw * len(groups) + 10
    parts = [f"<svg class='bars' width='{w}' height='{h + 50 + 14 * len(models)}' role='group' "
             f"aria-label='scores per model and task'>",
             f"<line x1='{left}' x2='{w - 10}' y1='{h}' y2='{h}' stroke='#999'/>",
             f"<text x='{left - 4}' y='14' font-size='9' text-anchor='end'>{top_label}</text>",
             f"<text x='{left - 4}' y='{h}' font-size='9' text-anchor='end'>0</text>"]
    for gi, g in enumerate(groups):
        x0 = left + gi * gw + gap / 2
        for mi, m in enumerate(models):
            v = scores[m].get(g)
            if not is_number(v) or v != v:
                continue
            bh = (h - 10) * max(0.0, v) / top
            parts.append(f"<rect x='{x0 + mi * bar:.1f}' y='{h - bh:.1f}' width='{bar - 1}' height='{bh:.1f}' "
                         f"fill='{BAR_COLOURS[mi % len(BAR_COLOURS)]}'><title>{html.escape(f'{m} {g}')}: "
                         f"{number(('extra', SCORES, m, g), v, '.4g')}</title></rect>")
        parts.append(f"<text x='{x0 + bar * len(models) / 2:.1f}' y='{h + 12}' font-size='8' text-anchor='middle'>"
                     f"{html.escape(str(g)[:16])}</text>")
    for mi, m in enumerate(models):
        y = h + 28 + 14 * mi
        parts.append(f"<rect x='{left}' y='{y - 8}' width='9' height='9' fill='{BAR_COLOURS[mi % len(BAR_COLOURS)]}'/>"
                     f"<text x='{left + 13}' y='{y}' font-size='10'>{html.escape(m)}</text>")
    return "".join(parts) + "</svg>"


def plots_svg(row: dict, number: Number = plain_number) -> str:
    """Every plot of a check: the gauge, its training curve, its bar chart (each empty when it has none)."""
    return gauge_svg(row, number) + curve_svg(row, number) + bars_svg(row, number)



def grid_markdown(rows: list[dict]) -> list[str]:
    """The milestone x profile grid: per cell the worst status, checks passed, and the headline value."""
    profiles = profiles_of(rows)
    out = ["| milestone | the seed's target | " + " | ".join(profiles) + " |", "|---|---|" + "---|" * len(profiles)]
    for m in MILESTONES.values():
        cells = []
        for p in profiles:
            status, head, passed, n = grid_cell(rows, m.id, p)
            value = f" {head['metric']} = {format_value(head['value'])} {target_text(head)}" if head and head.get("value") is not None else ""
            headline = html.unescape(headline_html(head)) if head else ""
            if headline:  # the seed's quantities first, the gate after them
                value = f" {headline};{value}"
            reason = error_reason(head) if status == "error" else ""
            cells.append("-" if head is None else f"{status.upper()} {passed}/{n}{value}" + (f": {reason}" if reason else ""))
        if not any(r["milestone"] == m.id and r["status"] != "not-implemented" for r in rows):
            cells = ["not implemented"] + [""] * (len(profiles) - 1)
        out.append(f"| {m.id} {m.title} | {m.seed_target} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def markdown(card: dict) -> str:
    rows = card["rows"]
    counts = status_counts(rows)
    lines = [f"# Scorecard ({card['generated']})", "",
             " · ".join(f"{n} {s}" for s, n in counts.items() if n), "", *grid_markdown(rows), "",
             "| milestone | check | profile | status | metric | value | target | data | protocol | measured on |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = r["status"].upper() + (f" (last attempt: {r['last_attempt']['status']})" if r.get("last_attempt") else "")
        cells = [r["milestone"], r["check"], r["profile"], status, r.get("metric") or "",
                 format_value(r.get("value")), target_text(r), r.get("data") or "", r.get("protocol") or "", provenance(r)]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    for r in rows:
        extra = r.get("extra") or {}
        if r["status"] in ("fail", "error", "skip") and r.get("message"):
            extra = {"message": r["message"], **extra}
        if r.get("last_attempt"):
            extra = {"last attempted": attempt_text(r["last_attempt"]), **extra}
        if extra:
            lines += ["", f"## {r['milestone']} · {r['check']} · {r['profile']}", ""]
            for k, v in extra.items():
                text = format_value(v) if not isinstance(v, str) or "\n" not in v else "\n\n    " + v.replace("\n", "\n    ")
                text = f"![{k}]({v})" if _is_image(v) and not v.startswith("data:") else text
                lines.append(f"- **{k}**: {text}")
    return "\n".join(lines) + "\n"


def _is_image(v) -> bool:
    """A PNG beside the scorecard (a path relative to reports/, e.g. w23's screenshot) or an inline data URI."""
    return isinstance(v, str) and "\n" not in v and (v.startswith("data:image/png;base64,") or
                                                    (v.endswith(".png") and "://" not in v))


def _value_html(v) -> str:
    """Multi-line text (stage tables, examples, analyses) is Markdown: rendered; an image is shown; the rest as
    it is."""
    if _is_image(v):
        return f"<a href='{html.escape(v)}'><img src='{html.escape(v)}' alt='screenshot' style='max-width:100%;border:1px solid #ddd'></a>"
    if isinstance(v, str) and "\n" in v:
        import markdown

        return "<div class='md'>" + markdown.markdown(v, extensions=["tables"]) + "</div>"
    if isinstance(v, (dict, list)):
        return f"<code>{html.escape(json.dumps(v, default=str))}</code>"
    return html.escape(format_value(v))


def _cell(rows: list[dict], milestone: str, profile: str) -> str:
    """A milestone x profile cell of the page's grid."""
    status, head, passed, n = grid_cell(rows, milestone, profile)
    if head is None:
        return "<td class='none'>-</td>"
    value = "" if head.get("value") is None else \
        f"<br><small>{html.escape(head.get('metric') or '')} = {html.escape(format_value(head['value']))} {html.escape(target_text(head))}</small>"
    headline = headline_html(head)
    if headline:  # the seed's quantities first, the gate after them
        value = f"<br>{headline}{value}"
    reason = error_reason(head) if status == "error" else ""
    if reason:
        value += f"<br><small class='reason'>{html.escape(reason)}</small>"
    theirs = learners([r for r in rows if r["milestone"] == milestone and r["profile"] == profile])
    if theirs:  # a learner's code measured here: say so in the grid, not only in the details
        value += f"<br><small class='code'>{html.escape(code_of(theirs[0]))}</small>"
    return f"<td>{badge_html(status)} <small>{passed}/{n}</small>{value}</td>"


def html_page(card: dict) -> str:
    rows = card["rows"]
    counts = status_counts(rows)
    measured = [r for r in rows if r["status"] != "not-implemented"]
    profiles = profiles_of(rows)
    grid = ["<table class='grid'><tr><th>milestone</th><th>the seed's target</th>"
            + "".join(f"<th>{html.escape(p)}</th>" for p in profiles) + "</tr>"]
    for m in MILESTONES.values():
        mine = [r for r in measured if r["milestone"] == m.id]
        cells = "".join(_cell(measured, m.id, p) for p in profiles)
        if not mine:
            cells = f"<td colspan='{max(1, len(profiles))}' class='none'>not implemented</td>"
        grid.append(f"<tr><td><a href='#{m.id}'>{m.id}</a> {html.escape(m.title)}</td>"
                    f"<td>{html.escape(m.seed_target)}</td>{cells}</tr>")
    grid.append("</table>")
    sections = []
    for m in MILESTONES.values():
        mine = sorted([r for r in measured if r["milestone"] == m.id], key=lambda r: (r["profile"] != "cpu", r["profile"], r["check"]))
        if not mine:
            continue
        checks = []
        for r in mine:
            extra = dict(r.get("extra") or {})
            if r.get("message") and r["status"] != "pass":
                extra = {"message": r["message"], **extra}
            if r.get("last_attempt"):
                extra = {"last attempted": attempt_text(r["last_attempt"]), **extra}
            details = "".join(f"<dt>{html.escape(k)}</dt><dd>{_value_html(v)}</dd>" for k, v in extra.items())
            value = "" if r.get("value") is None else \
                f"<p class='value'><b>{html.escape(r.get('metric') or '')} = {html.escape(format_value(r['value']))}</b>, target {html.escape(target_text(r))}</p>"
            checks.append(
                f"<section class='check'><h3>{badge_html(r['status'])} {html.escape(check_title(r))} "
                f"<small class='fn'>{html.escape(r['check'])} · {html.escape(r['profile'])}</small></h3>{value}"
                + (f"<p class='why'>{html.escape(r['message'][:400])}</p>"
                   if r.get("message") and r["status"] != "pass" else "")
                + f"<div class='plots'>{plots_svg(r)}</div>"
                f"<p class='meta'>data: {html.escape(r.get('data') or '-')}<br>protocol: {html.escape(r.get('protocol') or '-')}"
                f"<br>measured on: {html.escape(provenance(r))}"
                + (f"<br>last attempted: {html.escape(attempt_text(r['last_attempt']))}" if r.get("last_attempt") else "")
                + "</p>"
                + (f"<details><summary>details ({len(extra)})</summary><dl>{details}</dl></details>" if extra else "")
                + "</section>")
        sections.append(f"<h2 id='{m.id}'>{m.id} · {html.escape(m.title)}</h2>"
                        f"<p class='seed'>the seed's target: {html.escape(m.seed_target)}</p>{''.join(checks)}")
    summary = " · ".join(f"{n} {s}" for s, n in counts.items() if n)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>llm-milestones scorecard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}}
.grid td.none{{color:#999}}.badge{{color:#fff;border-radius:3px;padding:1px 6px;font-size:12px;text-transform:uppercase}}
.check{{border-top:1px solid #eee;padding:.4em 0}}.check h3{{font-size:16px;margin:.4em 0}}.fn{{color:#888;font-weight:normal;font-size:12px}}
.meta{{color:#555;font-size:13px}}.why{{color:#b71c1c;font-size:13px;white-space:pre-wrap}}.plots svg{{margin-right:1em;vertical-align:top}}.md table{{font-size:12px}}
dt{{font-weight:bold;margin-top:.3em}}dd{{margin-left:1em;overflow-x:auto}}code{{font-size:12px;word-break:break-all}}</style></head>
<body><h1>llm-milestones scorecard</h1><p>generated {html.escape(card['generated'])} · {html.escape(summary)}</p>
<h2>Milestones and profiles</h2>{''.join(grid)}{''.join(sections)}</body></html>
"""
