"""A quantitative target: metric, direction, threshold and the protocol under which it was measured."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")

    direction: Literal["lower", "higher"]  # lower: pass when value < threshold; higher: value > threshold
    threshold: float
    protocol: str  # how the number is measured: tokenizer, context, stride, n-shot, load pattern ...

    def passes(self, value: float) -> bool:
        if value != value:  # NaN never passes
            return False
        return value < self.threshold if self.direction == "lower" else value > self.threshold

    def describe(self) -> str:
        return f"{'<' if self.direction == 'lower' else '>'} {self.threshold:g}"
