"""The local tasks' data: each BIG-bench multiple-choice task of the `bigbench-tasks` fixture written as the JSONL
its lm-eval YAML reads (`dataset_path: json`), with that YAML copied beside it pointing at it.

The files are written at run time into the run directory (`<run>/tasks/<task>/`), not by the fixture converter:
the sample (`limit` items in sha256 order of `sample_seed` and the item's index) and each item's choice order
(shuffled by the same seed, so that no answer position is favoured: BIG-bench often lists the correct answer
first) belong to the profile, and the run directory keeps exactly what was scored beside the harness's output.

A row: {"id": index in task.json, "prompt": task_prefix + "Q: " + input + "\nA:", "choices": [...], "label": i}.
lm-eval joins prompt and choice with its target delimiter, one space.
"""
from __future__ import annotations

import hashlib
import json
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


def bigbench_rows(name: str, limit: int | None, seed: int) -> list[dict]:
    """The task's sampled items as rows; only items with exactly one best-scored choice (accuracy is defined)."""
    source = task_config(name)["metadata"]["bigbench_task"]
    path = fixture_path("bigbench-tasks") / f"{source}.json"
    if not path.exists():
        raise TaskDataError(f"task {name}: {path.name} is not in the bigbench-tasks fixture; add its task.json to "
                            f"fixtures/sources.yaml (bigbench-tasks members) and fetch it again")
    task = json.loads(path.read_text())
    prefix = task.get("task_prefix", "")
    rows = []
    for i, ex in enumerate(task["examples"]):
        scores = ex.get("target_scores")
        if not scores or sum(v == max(scores.values()) for v in scores.values()) != 1:
            continue
        choices = sorted(scores, key=lambda c: _order(seed, f"{i}:{c}"))
        gold = max(scores, key=scores.get)
        prompt = (prefix + "\nQ: " + ex["input"] + "\nA:").strip()
        rows.append({"id": i, "prompt": prompt, "choices": choices, "label": choices.index(gold)})
    rows.sort(key=lambda r: _order(seed, str(r["id"])))
    return rows[:limit] if limit else rows


def write_task(name: str, out_dir: Path, limit: int | None, seed: int) -> dict:
    """`<out_dir>/<name>/<name>.{yaml,jsonl}`; returns the rows' chance level (mean of 1 / number of choices)."""
    rows = bigbench_rows(name, limit, seed)
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
    return [json.loads(line) for line in (task_dir / name / f"{name}.jsonl").read_text().splitlines()]
