"""The pass/fail scorecard: reports/scorecard.{json,md,html} and reports/history.jsonl.

Rows arrive one per acceptance check (from the pytest plugin in conftest.py, under xdist from every worker),
are merged with the rows of earlier sessions (the newest row per milestone/check/profile wins), and every
milestone without a row is listed as not-implemented. `python -m impl report` rebuilds md and html from json.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path

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


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    rows = {_key(r): r for r in old if r["status"] != "not-implemented"}
    rows.update({_key(r): r for r in new})
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
    with open(out / "history.jsonl", "a") as f:
        for row in new_rows:
            f.write(json.dumps({k: v for k, v in row.items() if k != "curve"}, default=str) + "\n")
    return out / "scorecard.json"


def load(out: Path | None = None) -> dict:
    path = (out or reports_dir()) / "scorecard.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the acceptance suite first (pytest acceptance)")
    return json.loads(path.read_text())


def render(card: dict, out: Path) -> None:
    _atomic_write(out / "scorecard.md", markdown(card))
    _atomic_write(out / "scorecard.html", html_page(card))


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _target(row: dict) -> str:
    if row.get("target") is None:
        return ""
    return f"{'<' if row['direction'] == 'lower' else '>'} {_fmt(row['target'])}"


def markdown(card: dict) -> str:
    rows = card["rows"]
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    lines = [f"# Scorecard ({card['generated']})", "",
             " · ".join(f"{n} {s}" for s, n in counts.items() if n), "",
             "| milestone | check | profile | status | metric | value | target | data | protocol | commit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["milestone"], r["check"], r["profile"], r["status"].upper(), r.get("metric") or "",
                 _fmt(r.get("value")), _target(r), r.get("data") or "", r.get("protocol") or "", r.get("commit") or ""]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    for r in rows:
        extra = r.get("extra") or {}
        if r["status"] in ("fail", "error", "skip") and r.get("message"):
            extra = {"message": r["message"], **extra}
        if extra:
            lines += ["", f"## {r['milestone']} · {r['check']} · {r['profile']}", ""]
            for k, v in extra.items():
                text = _fmt(v) if not isinstance(v, str) or "\n" not in v else "\n\n    " + v.replace("\n", "\n    ")
                lines.append(f"- **{k}**: {text}")
    return "\n".join(lines) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(rows: list[dict]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    curves = [r for r in rows if r.get("curve")]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for r in curves:
            steps, losses = zip(*r["curve"])
            ax.plot(steps, losses, label=f"{r['milestone']} {r['check']} [{r['profile']}]")
        ax.set(xlabel="step", ylabel="training loss", title="Training curves")
        ax.legend(fontsize=7)
        plots.append(("Training curves", _png(fig)))
    measured = [r for r in rows if isinstance(r.get("value"), (int, float)) and r.get("target") is not None]
    if measured:
        fig, axes = plt.subplots(1, len(measured), figsize=(2.4 * len(measured) + 1, 3), squeeze=False)
        for ax, r in zip(axes[0], measured):
            ax.bar([0], [r["value"]], color="tab:green" if r["status"] == "pass" else "tab:red", width=0.5)
            ax.axhline(r["target"], color="black", linestyle="--", label=f"target {_target(r)}")
            ax.set_xticks([])
            ax.set_title(f"{r['milestone']} {r['metric']}\n[{r['profile']}]", fontsize=8)
            ax.legend(fontsize=7)
        plots.append(("Measured vs target", _png(fig)))
    return plots


def html_page(card: dict) -> str:
    rows = card["rows"]
    esc = lambda v: html.escape(_fmt(v))
    colour = {"pass": "#c8e6c9", "fail": "#ffcdd2", "error": "#ffab91", "skip": "#eeeeee", "not-implemented": "#fff9c4"}
    body = ["<tr>" + "".join(f"<td>{esc(r.get(k))}</td>" if k != "status" else
                             f"<td style='background:{colour[r['status']]}'><b>{r['status']}</b></td>"
                             for k in ("milestone", "check", "profile", "status", "metric", "value"))
            + f"<td>{html.escape(_target(r))}</td><td>{esc(r.get('data'))}</td><td>{esc(r.get('protocol'))}</td>"
            f"<td>{esc(r.get('hardware'))}</td><td>{esc(r.get('commit'))}</td><td>{esc(r.get('duration_s'))}</td></tr>"
            for r in rows]
    details = []
    for r in rows:
        extra = dict(r.get("extra") or {})
        if r.get("message") and r["status"] != "pass":
            extra = {"message": r["message"], **extra}
        if extra:
            items = "".join(f"<dt>{html.escape(k)}</dt><dd><pre>{esc(v)}</pre></dd>" for k, v in extra.items())
            details.append(f"<h3>{esc(r['milestone'])} · {esc(r['check'])} · {esc(r['profile'])}</h3><dl>{items}</dl>")
    plots = "".join(f"<h2>{t}</h2><img alt='{t}' src='{src}'>" for t, src in _plots(rows))
    head = ("<tr>" + "".join(f"<th>{h}</th>" for h in ("milestone", "check", "profile", "status", "metric", "value",
                                                      "target", "data", "protocol", "hardware", "commit", "seconds"))
            + "</tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>llm-milestones scorecard</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;vertical-align:top}}pre{{white-space:pre-wrap;margin:0}}</style></head>
<body><h1>llm-milestones scorecard</h1><p>generated {html.escape(card['generated'])}</p>
<table>{head}{''.join(body)}</table>{plots}<h2>Details</h2>{''.join(details)}</body></html>
"""
