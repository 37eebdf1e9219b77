"""A quantitative target: metric, direction, threshold and the protocol under which it was measured.

An absolute target compares the metric itself (gpu1 w03: accuracy > 0.90). A relative target names baselines
measured in the same run and compares the metric against the strongest of them (cpu w03: accuracy minus the
better of TF-IDF+LR and the majority class > 0.05; fine-tuned ppl / ppl before fine-tuning < 0.85).

A noisy target may ask for several seeds (`seeds: [0, 1, 2]`): the check runs once per seed and is gated on the
worst seed. The worst, not the mean with an interval: with three seeds a 95% interval of the mean is wider than
the spread itself (t = 4.3), and "every seed reaches the target" is the claim a reader takes from a pass.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from impl.core.errors import MilestonesError


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")

    direction: Literal["lower", "higher"]  # lower: pass when value < threshold; higher: value > threshold
    threshold: float
    protocol: str  # how the number is measured: tokenizer, context, stride, n-shot, load pattern ...
    baselines: list[str] = []  # names of baselines measured in the same run; empty: an absolute target
    compare: Literal["difference", "ratio"] = "difference"  # metric - best baseline, or metric / best baseline
    seeds: list[int] = []  # run the check once per seed and gate on the worst; empty: the spec's own seed, once
    # calibration only (python -m impl calibrate): how far beyond the worst seed a threshold sits when the target
    # is not a margin over a baseline; None: 1.1 (10% drift). Float round-off parity targets use ~20.
    headroom: float | None = None
    # calibration only: the value of no skill or no difference where it is not 0 and no baseline says it (1 for
    # a ratio of two things measured in the same run, or a model's loss over its unigram model's); None: 0
    no_skill: float | None = None

    def passes(self, value: float) -> bool:
        if value != value:  # NaN never passes
            return False
        return value < self.threshold if self.direction == "lower" else value > self.threshold

    def checked_value(self, metric: float, baselines: dict[str, float] | None = None) -> float:
        """What `passes` judges: the metric itself, or the metric against the strongest named baseline."""
        if not self.baselines:
            return metric
        missing = [b for b in self.baselines if b not in (baselines or {})]
        if missing:
            raise MilestonesError(f"target needs baselines {missing} measured in the same run; got {sorted(baselines or {})}")
        values = [baselines[b] for b in self.baselines]
        best = max(values) if self.direction == "higher" else min(values)
        return metric - best if self.compare == "difference" else metric / best

    def label(self, metric: str) -> str:
        """The checked quantity's name, e.g. `accuracy - max(tfidf_logreg, majority_class)`."""
        if not self.baselines:
            return metric
        best = self.baselines[0] if len(self.baselines) == 1 else \
            f"{'max' if self.direction == 'higher' else 'min'}({', '.join(self.baselines)})"
        return f"{metric} {'-' if self.compare == 'difference' else '/'} {best}"

    def worst(self, values: list[float]) -> float:
        """The value that decides a check run over several seeds."""
        if any(v != v for v in values):
            return float("nan")
        return max(values) if self.direction == "lower" else min(values)

    def protocol_text(self) -> str:
        """The protocol as the scorecard states it, with the seed gating when there is one."""
        if not self.seeds:
            return self.protocol
        return f"{self.protocol}; gated on the worst of seeds {', '.join(map(str, self.seeds))}"

    def describe(self) -> str:
        return f"{'<' if self.direction == 'lower' else '>'} {self.threshold:g}"
