"""What a hardware profile says about w23; validated when the profile is loaded.

    w23:
      scorecard: null                          # the scorecard.json to build from; null: the session's reports/
      interviews: portfolio/interviews.yaml    # the learner's mock interviews and human evaluations
      site_dir: null                           # where the built site goes; null: <reports>/site
      required_interviews: 3                   # the seed's "at least 3 mock interviews"
      targets: {broken_links: ..., numbers_mismatched: ..., mock_interviews: ...}

The portfolio does not depend on hardware: only the cpu profile carries it (a machine runs it once, whatever
GPU rows its merged scorecard holds). Relative paths are relative to the repository root.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from impl.core.targets import Target

ROOT = Path(__file__).resolve().parents[2]


class W23Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scorecard: str | None = None
    interviews: str = "portfolio/interviews.yaml"
    site_dir: str | None = None
    required_interviews: int = 3
    window: tuple[int, int] = (1400, 900)  # the browser window of the checks and the index's screenshot
    targets: dict[Literal["broken_links", "numbers_mismatched", "mock_interviews"], Target]

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else ROOT / p

    def site_path(self, reports: Path) -> Path:
        """Where the site goes: site_dir, or site/ in the session's reports directory."""
        return self.path(self.site_dir) if self.site_dir else Path(reports) / "site"
