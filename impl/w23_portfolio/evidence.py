"""Human-judged evidence the learner records by hand in a YAML file (portfolio/interviews.yaml): mock interviews
(date, interviewer, questions, feedback) and human evaluations (w07's alternative to ROUGE-L). Validated with
pydantic; a broken file is one PortfolioInputError naming the file, the entry and the key."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from impl.core.errors import MilestonesError
from impl.core.profiles import read_yaml


class PortfolioInputError(MilestonesError, ValueError):
    """An input of the portfolio that cannot be used: the interviews YAML, a missing or empty scorecard."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interview(Strict):
    date: dt.date
    interviewer: str = Field(min_length=1)
    role: str = "LLM algorithm engineer"
    questions: list[str] = Field(min_length=1)
    feedback: str = Field(min_length=1)
    outcome: str | None = None  # e.g. "would hire", "second round"


class HumanEvaluation(Strict):
    milestone: str  # e.g. w07
    date: dt.date
    evaluators: list[str] = Field(min_length=1)
    protocol: str = Field(min_length=1)  # what was compared, how items were drawn, blind or not
    items: int = Field(gt=0)
    wins: int = Field(ge=0)  # the tuned model preferred
    losses: int = Field(ge=0)
    ties: int = Field(ge=0)
    notes: str | None = None


class Evidence(Strict):
    interviews: list[Interview] = []
    human_evaluations: list[HumanEvaluation] = []


def load_evidence(path: Path) -> Evidence:
    """The file's evidence; a missing or empty file is no evidence yet (the interview count is then 0)."""
    if not path.exists():
        return Evidence()
    raw = read_yaml(path, PortfolioInputError)
    if raw is None:
        return Evidence()
    if not isinstance(raw, dict):
        raise PortfolioInputError(f"{path}: expected a mapping with keys interviews, human_evaluations "
                                  f"(see portfolio/interviews.example.yaml)")
    try:
        return Evidence.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            got = err.get("input")
            got = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
            lines.append(f"{path}: key '{key}': {err['msg']}{got}")
        raise PortfolioInputError("\n".join(lines)) from None


def distinct_interviews(evidence: Evidence) -> list[Interview]:
    """The interviews, an entry repeated word for word counted once (a copy-pasted entry is not another
    interview); the first of each, in the file's order."""
    seen, out = set(), []
    for interview in evidence.interviews:
        key = interview.model_dump_json()
        if key not in seen:
            seen.add(key)
            out.append(interview)
    return out
