"""What a hardware profile says about w15; validated when the profile is loaded.

    w15:
      models: {smollm2: fixture:smollm2, smollm2-w07-lora: "w07:lora", w01-gpt: w01}
      pretrained: smollm2               # the model whose average accuracy is gated against chance
      tasks:
        source: local                   # impl/w15_eval/tasks/<name>/ over the bigbench-tasks fixture
        list: [{name: bb_general_knowledge, num_fewshot: 0, metric: acc}, ...]
      limit: 100                        # lm-eval's `limit`: the first N items of each task's seeded sample
      sample_seed: 0
      batch_size: 16
      dtype: float32
      protocol_check: {task: bb_general_knowledge, model: smollm2}
      targets: {avg_acc_margin: ..., report_cells_missing: ..., protocol_items_differing: ...}
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from impl.core.targets import Target

TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # one folder per local task, lm-eval style
TARGETS = Literal["avg_acc_margin", "report_cells_missing", "protocol_items_differing", "leaderboard_max_abs_diff"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def local_tasks() -> list[str]:
    return sorted(p.name for p in TASKS_DIR.iterdir() if (p / f"{p.name}.yaml").exists())


class TaskSpec(Strict):
    name: str  # a local task folder (source local) or an lm-eval task name (source harness)
    num_fewshot: int = 0
    metric: str = "acc"  # the metric reported and averaged: acc, acc_norm, exact_match ...
    filter: str = "none"  # lm-eval's filter of that metric: none; gsm8k: strict-match
    published: dict[str, float] = {}  # model name -> a published score in percent, for the leaderboard check
    # a group task (lm-eval's `mmlu`): the harness's own aggregate (mmlu weights subjects by their size), or the
    # plain mean over its subjects, as the Open LLM Leaderboard v1 reported MMLU
    aggregate: Literal["harness", "subtask_mean"] = "harness"


class TasksSpec(Strict):
    """`local`: our own lm-eval YAML tasks in impl/w15_eval/tasks/, their JSONL written into the run directory from
    the BIG-bench fixture. `harness`: lm-eval's built-in tasks (their datasets from the hub), plus any task
    folders under `include_path` (the fast tests' stand-ins in the same format)."""
    source: Literal["local", "harness"] = "local"
    include_path: str | None = None
    list: list[TaskSpec]

    @model_validator(mode="after")
    def _known_local_tasks(self):
        if self.source == "local":
            known = local_tasks()
            unknown = [t.name for t in self.list if t.name not in known]
            if unknown:
                raise ValueError(f"unknown local task(s) {unknown}; known (folders of impl/w15_eval/tasks/): "
                                 f"{', '.join(known)}")
        if len({t.name for t in self.list}) != len(self.list):
            raise ValueError("a task is listed twice")
        return self


class ProtocolCheck(Strict):
    """Recompute one task's multiple-choice accuracy for one model outside the harness (transformers, summed
    log-likelihood of each choice after the same prompt) and compare."""
    task: str
    model: str
    limit: int | None = None  # the first N items of the task's sample (None: the run's limit)


class W15Spec(Strict):
    # name -> reference: a hub id, a local directory or fixture:NAME (an HF causal LM), `w07:lora` (the merged
    # model of this profile's w07 run), `w01` (this profile's w01 GPT through our own lm-eval LM)
    models: dict[str, str]
    pretrained: str  # which model's average is gated against chance
    control: str | None = None  # a model reported as a control (near chance)
    tasks: TasksSpec
    limit: int | None = None  # items per task (lm-eval's limit); None: every item
    sample_seed: int = 0  # local tasks: which items are sampled, and the order of each item's choices
    batch_size: int | str = 16
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    protocol_check: ProtocolCheck | None = None
    leaderboard_model: str | None = None  # whose scores are compared with the tasks' `published` values
    targets: dict[TARGETS, Target]

    @model_validator(mode="after")
    def _names(self):
        names = [t.name for t in self.tasks.list]
        for field in ("pretrained", "control", "leaderboard_model"):
            v = getattr(self, field)
            if v is not None and v not in self.models:
                raise ValueError(f"{field} {v!r} is not one of the models {list(self.models)}")
        if self.protocol_check:
            if self.protocol_check.model not in self.models:
                raise ValueError(f"protocol_check.model {self.protocol_check.model!r} is not one of {list(self.models)}")
            if self.protocol_check.task not in names:
                raise ValueError(f"protocol_check.task {self.protocol_check.task!r} is not one of the tasks {names}")
        if "protocol_items_differing" in self.targets and not self.protocol_check:
            raise ValueError("target protocol_items_differing needs a protocol_check section")
        if "leaderboard_max_abs_diff" in self.targets and not self.leaderboard_model:
            raise ValueError("target leaderboard_max_abs_diff needs leaderboard_model")
        return self
