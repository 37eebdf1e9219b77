"""The local tasks' data: published multiple-choice benchmarks of the `mc-benchmarks` fixture (ARC, HellaSwag,
MMLU, PIQA, SciQ, OpenBookQA, in the hub datasets' own columns) formatted exactly as lm-evaluation-harness's own
task of the same name formats them, written as the JSONL its local YAML reads (`dataset_path: json`), with that
YAML copied beside it pointing at it.

The files are written at run time into the run directory (`<run>/tasks/<task>/`), not by the fixture converter:
the sample (`limit` items in sha256 order of `sample_seed` and the item's index) belongs to the profile, and the
run directory keeps exactly what was scored beside the harness's output. Choices keep the dataset's order, as
the harness keeps it (MMLU's answer letters name positions).

A row: {"id": index in the benchmark's file, "prompt": ..., "choices": [...], "label": i}. lm-eval joins prompt
and choice with its target delimiter, one space.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import yaml

from impl.core.errors import MilestonesError
from impl.core.fixtures import fixture_path
from impl.w15_eval.spec import TASKS_DIR


class TaskDataError(MilestonesError):
    pass


def _order(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def task_config(name: str) -> dict:
    return yaml.safe_load((TASKS_DIR / name / f"{name}.yaml").read_text())


def _hellaswag_text(text: str) -> str:
    """lm-eval's hellaswag `preprocess`: WikiHow's bracketed markers out, double spaces closed."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _arc(d):
    return "Question: " + d["question"] + "\nAnswer:", d["choices"]["text"], d["choices"]["label"].index(d["answerKey"])


def _hellaswag(d):
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    return (_hellaswag_text(d["activity_label"] + ": " + ctx), [_hellaswag_text(e) for e in d["endings"]],
            int(d["label"]))


def _mmlu(d):
    subject = d["subject"].replace("_", " ")
    options = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", d["choices"]))
    return (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            f"{d['question'].strip()}{options}\nAnswer:", ["A", "B", "C", "D"], int(d["answer"]))


def _piqa(d):
    return "Question: " + d["goal"] + "\nAnswer:", [d["sol1"], d["sol2"]], int(d["label"])


def _sciq(d):
    return ((d["support"].strip() + "\nQuestion: " + d["question"] + "\nAnswer:").strip(),
            [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]], 3)


def _openbookqa(d):
    return d["question_stem"], d["choices"]["text"], d["choices"]["label"].index(d["answerKey"].strip())


FORMATS = {"arc": _arc, "hellaswag": _hellaswag, "mmlu": _mmlu, "piqa": _piqa, "sciq": _sciq,
           "openbookqa": _openbookqa}  # lm-eval's doc_to_text / doc_to_choice / doc_to_target of each


def benchmark_rows(name: str, limit: int | None, seed: int) -> list[dict]:
    """The task's sampled items as rows, formatted as lm-eval's task of the same benchmark formats them."""
    meta = task_config(name)["metadata"]
    path = fixture_path("mc-benchmarks") / f"{meta['benchmark']}.jsonl"
    if not path.exists():
        raise TaskDataError(f"task {name}: {path.name} is not in the mc-benchmarks fixture (its benchmarks: "
                            f"{', '.join(p.stem for p in sorted(path.parent.glob('*.jsonl')))})")
    fmt = FORMATS[meta["format"]]
    rows = []
    with open(path) as f:  # not splitlines(): the text holds U+2028 and other line separators
        items = [json.loads(line) for line in f]
    for i, item in enumerate(items):
        prompt, choices, label = fmt(item)
        rows.append({"id": i, "prompt": prompt, "choices": choices, "label": label})
    rows.sort(key=lambda r: _order(seed, str(r["id"])))
    return rows[:limit] if limit else rows


def write_task(name: str, out_dir: Path, limit: int | None, seed: int) -> dict:
    """`<out_dir>/<name>/<name>.{yaml,jsonl}`; returns the rows' chance level (mean of 1 / number of choices)."""
    rows = benchmark_rows(name, limit, seed)
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    config = task_config(name)
    config["dataset_kwargs"] = {"data_files": {"test": str(data)}}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return {"items": len(rows), "chance": sum(1 / len(r["choices"]) for r in rows) / len(rows),
            "choices_per_item": sum(len(r["choices"]) for r in rows) / len(rows)}


def read_rows(task_dir: Path, name: str) -> list[dict]:
    with open(task_dir / name / f"{name}.jsonl") as f:  # not splitlines(): U+2028 may occur in the text
        return [json.loads(line) for line in f]
