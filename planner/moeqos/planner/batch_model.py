"""The batch dimension of the latency model: a decode step on B streams at once.

A step computes one token for each of B rows. Its time is

    step(B) = fixed * fixed_ratio(B)
            + scale(B) * sum_{l,e} call(l, e) * (P_B[l][e] + growth(l, e) * (B * f[l][e] - P_B[l][e]))

with f[l][e] the expert's calls per token (the profile's routing frequency), P_B = 1 - (1 - f)^B the
chance that at least one of B tokens routed independently touches it (each distinct expert runs once
per step), B * f the tokens it is expected to get, and a call on n tokens costing
`call * (1 + growth * (n - 1))` (`growth` from the profile's `BatchCall`s: (ratio - 1) / (tokens - 1)).
`fixed_ratio` and `scale` interpolate the profile's `BatchStep`s linearly in B from (1, 1) at one row
(beyond the last measured rows the fixed part extrapolates its last slope and the scale stays). At
B = 1 every term is the one-stream model's: P_1 = f and n = 1. A disk expert touched and missed is
loaded once per step: `P_B * (1 - hit) * load`.

Per-stream tokens/s = 1 / step(B); aggregate tokens/s = B / step(B).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile

MAX_CONCURRENCY = 4096
"""Most streams a prediction may be asked for."""


def check_concurrency(rows: int) -> int:
    """`rows` if it is a stream count the model takes (1 to MAX_CONCURRENCY), else OutOfRange."""
    if not 1 <= rows <= MAX_CONCURRENCY:
        raise OutOfRange(f"concurrency must be in [1, {MAX_CONCURRENCY}], got {rows}")
    return rows


@dataclass(frozen=True)
class BatchModel:
    """The fitted batch terms (plain data; `to_dict`/`from_dict`). Empty: one stream only."""

    growth: dict[str, float] = field(default_factory=dict)
    """Per measured `precision@tier`, a call's extra cost per extra token, over a one-token call."""
    steps: tuple[tuple[int, float, float], ...] = ()
    """(rows, fixed_ratio, expert_scale) of each measured batch step, by rows."""

    @classmethod
    def fit(cls, profile: Profile) -> BatchModel:
        growth = {
            f"{c.precision.value}@{c.tier}": max(0.0, (c.ratio - 1.0) / (c.tokens - 1))
            for c in profile.batch_calls
        }
        steps = tuple(sorted((s.rows, s.fixed_ratio, s.expert_scale) for s in profile.batch_steps))
        return cls(growth, steps)

    @property
    def measured(self) -> bool:
        """Whether the profile measured batched steps (else only one stream can be predicted)."""
        return bool(self.steps)

    def check(self, rows: int) -> None:
        """InvalidArgument when `rows` > 1 streams cannot be predicted from this model."""
        check_concurrency(rows)
        if rows > 1 and not self.measured:
            raise InvalidArgument(
                f"the profile has no batched step timings, so tokens/s at {rows} concurrent streams cannot "
                "be predicted; measure the profile again (`moeqos profile`) or plan for one stream"
            )

    def fixed_ratio(self, rows: int) -> float:
        """The dense (experts-off) step at `rows` rows over the one-row step."""
        points = [(1, 1.0), *((r, f) for r, f, _ in self.steps)]
        if rows >= points[-1][0] and len(points) > 1:
            (r0, f0), (r1, f1) = points[-2], points[-1]
            return max(f1 + (rows - r1) * (f1 - f0) / (r1 - r0), 1e-9)
        return float(np.interp(rows, [r for r, _ in points], [f for _, f in points]))

    def expert_scale(self, rows: int) -> float:
        """Measured over predicted expert time of a step at `rows` rows (1 at one row; held beyond)."""
        points = [(1, 1.0), *((r, s) for r, _, s in self.steps)]
        return float(np.interp(rows, [r for r, _ in points], [s for _, s in points]))

    def call_growth(self, precision: Precision, tier: str) -> float:
        """Extra cost per extra token of one call in (precision, tier): its own measurement, else the
        median over the tier's, else over every measurement (the profile times the device tier only),
        else 0."""
        key = f"{precision.value}@{tier}"
        if key in self.growth:
            return self.growth[key]
        same_tier = [g for k, g in self.growth.items() if k.endswith(f"@{tier}")]
        pooled = same_tier or list(self.growth.values())
        return float(statistics.median(pooled)) if pooled else 0.0

    def calls_per_step(self, frequency: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """([L, E] chance each expert runs in a step of `rows` tokens, [L, E] tokens it then gets in
        expectation over all steps, i.e. rows * frequency). At one row both are the frequency itself."""
        frequency = np.asarray(frequency)  # [L, E]
        if rows == 1:
            return frequency, frequency
        return 1.0 - (1.0 - np.clip(frequency, 0.0, 1.0)) ** rows, rows * frequency

    # ----- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"growth": dict(self.growth), "steps": [list(s) for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> BatchModel:
        if not data:
            return cls()
        return cls(
            {k: float(v) for k, v in data.get("growth", {}).items()},
            tuple((int(r), float(f), float(s)) for r, f, s in data.get("steps", [])),
        )
