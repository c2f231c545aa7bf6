"""Quality-of-service targets: what a task asks of an executor."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any


class Objective(enum.StrEnum):
    """What to optimise once every given bound is met."""

    SPEED = "speed"
    """Maximise predicted tokens/s."""
    QUALITY = "quality"
    """Minimise predicted perplexity."""


@dataclass(frozen=True)
class QosTarget:
    """A throughput floor, a quality ceiling, or both, and what to optimise within them.

    With only a quality ceiling the planner maximises speed; with only a throughput floor it
    minimises perplexity; with both it meets both and optimises `objective`.
    """

    min_tokens_per_s: float | None = None
    """Throughput floor in decode tokens per second."""
    max_perplexity: float | None = None
    """Absolute perplexity ceiling."""
    max_perplexity_increase: float | None = None
    """Ceiling as an increase over the full-precision perplexity (e.g. 0.5 means +0.5)."""
    objective: Objective | None = None
    """Explicit objective; None picks the one implied by the bounds given (see class docstring)."""

    def __post_init__(self) -> None:
        for name in ("min_tokens_per_s", "max_perplexity", "max_perplexity_increase"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {value}")
        if self.max_perplexity is not None and self.max_perplexity < 1:
            raise ValueError(f"max_perplexity must be at least 1, got {self.max_perplexity}")
        if self.max_perplexity is not None and self.max_perplexity_increase is not None:
            raise ValueError("give max_perplexity or max_perplexity_increase, not both")
        if self.objective is not None and not isinstance(self.objective, Objective):
            object.__setattr__(self, "objective", Objective(self.objective))
        if not self.has_bound and self.objective is None:
            raise ValueError("a QoS target needs a throughput floor, a quality ceiling or an objective")

    @property
    def has_bound(self) -> bool:
        return any(
            v is not None for v in (self.min_tokens_per_s, self.max_perplexity, self.max_perplexity_increase)
        )

    @property
    def effective_objective(self) -> Objective:
        """The objective the solver uses (see class docstring)."""
        if self.objective is not None:
            return self.objective
        has_quality_bound = self.max_perplexity is not None or self.max_perplexity_increase is not None
        return Objective.SPEED if has_quality_bound else Objective.QUALITY

    def perplexity_ceiling(self, reference_perplexity: float) -> float | None:
        """The absolute ceiling this target sets, given the full-precision perplexity."""
        if self.max_perplexity is not None:
            return self.max_perplexity
        if self.max_perplexity_increase is not None:
            return reference_perplexity + self.max_perplexity_increase
        return None

    def describe(self) -> str:
        parts = []
        if self.min_tokens_per_s is not None:
            parts.append(f">= {self.min_tokens_per_s:g} tok/s")
        if self.max_perplexity is not None:
            parts.append(f"ppl <= {self.max_perplexity:g}")
        if self.max_perplexity_increase is not None:
            parts.append(f"ppl <= ref + {self.max_perplexity_increase:g}")
        parts.append(f"optimise {self.effective_objective.value}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_tokens_per_s": self.min_tokens_per_s,
            "max_perplexity": self.max_perplexity,
            "max_perplexity_increase": self.max_perplexity_increase,
            "objective": self.objective.value if self.objective else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QosTarget:
        objective = data.get("objective")
        return cls(
            min_tokens_per_s=data.get("min_tokens_per_s"),
            max_perplexity=data.get("max_perplexity"),
            max_perplexity_increase=data.get("max_perplexity_increase"),
            objective=Objective(objective) if objective else None,
        )
