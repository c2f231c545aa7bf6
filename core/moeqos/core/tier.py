"""Memory tiers an expert can live in.

A tier is named by a string: a torch device string for memory a processor computes from (`cuda:0`,
`cpu`, `mps`) or `disk` for experts that are not resident and are read into a bounded slot pool on use.
On a CPU-only machine the tiers are `cpu` and `disk`; on a GPU box `cuda:0`, `cpu` and `disk`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DISK = "disk"
"""The non-resident tier: the expert's quantized bytes stay in the on-disk variant cache."""

_DEVICE_TIER = re.compile(r"^(cpu|disk|mps|(cuda|xpu)(:\d+)?)$")


def validate_tier(name: str) -> str:
    """Return `name` if it is a well-formed tier name, else raise ValueError."""
    if not isinstance(name, str) or not _DEVICE_TIER.match(name):
        raise ValueError(f"unknown tier {name!r}; expected cpu, disk, mps or cuda[:N]")
    return name


@dataclass(frozen=True)
class TierBudget:
    """One memory tier and how many bytes of experts it may hold."""

    name: str
    """Tier name (see module docstring)."""
    budget_bytes: int
    """Bytes of expert weights the tier may hold; for `disk`, the on-disk cache size."""

    def __post_init__(self) -> None:
        validate_tier(self.name)
        if not isinstance(self.budget_bytes, int) or self.budget_bytes < 0:
            raise ValueError(
                f"tier {self.name}: budget must be a non-negative integer, got {self.budget_bytes!r}"
            )

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "budget_bytes": self.budget_bytes}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TierBudget:
        return cls(name=str(data["name"]), budget_bytes=int(data["budget_bytes"]))  # type: ignore[call-overload]


@dataclass(frozen=True)
class TierStatus:
    """One tier as an executor reports it: its budget and what the current plan puts there."""

    name: str
    budget_bytes: int
    used_bytes: int
    """Bytes of experts the current plan assigns to this tier (on the device tier, plus what the plan's
    dense part holds beyond the dense precision's; moeqos.core.dense)."""

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "budget_bytes": self.budget_bytes, "used_bytes": self.used_bytes}
