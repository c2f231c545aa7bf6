"""What a profile measures about batched decode steps: how a step's cost grows with the streams in it.

A batched decode step computes one token for each of B streams (rows). Its cost has two parts that
grow differently with B (moeqos.planner.batch_model turns them into a prediction):
- the dense part (attention, norms, router, head, overhead) runs once on all B rows: `BatchStep`
  measures it, experts off, as a ratio over the one-row step (`Profile.fixed_seconds`);
- each routed expert runs once per step on every token routed to it: one call on n tokens costs
  `BatchCall.ratio` (at `tokens` rows) times a one-token call, and `BatchStep.expert_scale` folds in
  what the batched MoE dispatch adds around the calls.
Both are ratios, so a profile whose fixed cost or call costs are scaled (the QoS loop's live
calibration) scales its batched steps alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from moeqos.core.precision import Precision


def _positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value}")


@dataclass(frozen=True)
class BatchCall:
    """One expert call on `tokens` tokens against one on a single token, in (precision, tier)."""

    precision: Precision
    tier: str
    tokens: int
    """Tokens in the timed call (more than 1)."""
    ratio: float
    """Seconds of the call on `tokens` tokens / seconds on one token (both timed with cold caches)."""

    def __post_init__(self) -> None:
        if self.tokens < 2:
            raise ValueError(f"a batch call needs at least 2 tokens, got {self.tokens}")
        _positive("ratio", self.ratio)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchCall:
        return cls(Precision(data["precision"]), str(data["tier"]), int(data["tokens"]), float(data["ratio"]))


@dataclass(frozen=True)
class BatchStep:
    """A decode step on `rows` streams at once, measured with the served plan."""

    rows: int
    """Streams (batch rows) in the timed steps (more than 1)."""
    fixed_ratio: float
    """The step with every expert call switched off / the same at one row (`Profile.fixed_seconds`)."""
    expert_scale: float
    """The step's measured expert time / the time its routed calls predict (the calls each step made,
    each distinct expert once at its one-token cost times its `BatchCall` growth for its tokens)."""

    def __post_init__(self) -> None:
        if self.rows < 2:
            raise ValueError(f"a batch step needs at least 2 rows, got {self.rows}")
        _positive("fixed_ratio", self.fixed_ratio)
        _positive("expert_scale", self.expert_scale)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchStep:
        return cls(int(data["rows"]), float(data["fixed_ratio"]), float(data["expert_scale"]))
