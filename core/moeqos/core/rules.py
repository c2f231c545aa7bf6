"""Ordered `pattern=precision@tier` placement rules, first match wins (like llama.cpp's --override-tensor).

A pattern names experts as `L<layers>.E<experts>`, each part one of `*` (all), `N` (one), `N-M`
(inclusive range) or `N+M+K` (a set): `L0.E*`, `L*.E3`, `L0-7.E0+1`. A bare `*` matches every expert.
Rules are resolved into a flat per-expert `Plan` before anything is applied or solved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moeqos.core.precision import Precision
from moeqos.core.tier import validate_tier

_PATTERN = re.compile(r"^L(?P<layers>[^.]+)\.E(?P<experts>.+)$")
_PART = re.compile(r"^(\*|\d+(-\d+)?|\d+(\+\d+)+)$")


def _matches_part(part: str, index: int) -> bool:
    if part == "*":
        return True
    if "-" in part:
        low, high = (int(x) for x in part.split("-"))
        return low <= index <= high
    return index in {int(x) for x in part.split("+")}


@dataclass(frozen=True)
class PlacementRule:
    """One `pattern=precision[@tier]` rule. `tier` None means "the plan's default tier"."""

    pattern: str
    precision: Precision
    tier: str | None = None

    def __post_init__(self) -> None:
        if self.pattern != "*":
            match = _PATTERN.match(self.pattern)
            if not match or not all(_PART.match(match[g]) for g in ("layers", "experts")):
                raise ValueError(
                    f"bad expert pattern {self.pattern!r}; expected L<layers>.E<experts> with "
                    "each part *, N, N-M or N+M (e.g. L0-3.E*), or *"
                )
        if self.tier is not None:
            validate_tier(self.tier)

    def matches(self, layer: int, expert: int) -> bool:
        """True if this rule's pattern names expert `expert` of layer `layer`."""
        if self.pattern == "*":
            return True
        match = _PATTERN.match(self.pattern)
        assert match is not None  # checked in __post_init__
        return _matches_part(match["layers"], layer) and _matches_part(match["experts"], expert)

    @classmethod
    def parse(cls, text: str) -> PlacementRule:
        """Parse `pattern=precision[@tier]`."""
        pattern, sep, target = text.strip().partition("=")
        if not sep:
            raise ValueError(f"bad rule {text!r}; expected pattern=precision[@tier]")
        precision, tier = parse_target(target)
        return cls(pattern.strip(), precision, tier)

    def __str__(self) -> str:
        suffix = f"@{self.tier}" if self.tier else ""
        return f"{self.pattern}={self.precision.value}{suffix}"


def parse_target(text: str) -> tuple[Precision, str | None]:
    """Parse `precision[@tier]` into its parts (tier None when absent)."""
    precision, _, tier = text.strip().partition("@")
    return Precision.parse(precision), (validate_tier(tier.strip()) if tier.strip() else None)


def first_match(rules: list[PlacementRule], layer: int, expert: int) -> PlacementRule | None:
    """The first rule in `rules` that names (layer, expert), or None."""
    return next((rule for rule in rules if rule.matches(layer, expert)), None)
