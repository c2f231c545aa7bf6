"""Byte sizes with units (`24GiB`, `80GB`, `512MiB`) and `TIER=SIZE` budget arguments."""

from __future__ import annotations

import re

from moeqos.core.errors import InvalidArgument
from moeqos.core.tier import TierBudget, validate_tier

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}
_SIZE = re.compile(r"^\s*(?P<number>\d+(\.\d*)?|\.\d+)\s*(?P<unit>[a-zA-Z]*)\s*$")


def parse_bytes(text: str) -> int:
    """Parse `24GiB`, `80GB`, `1.5 TiB`, `4096B`; bare K/M/G/T are binary (like llama.cpp). The unit is
    required: a bare number is refused, since `70` meant as 70 GiB would silently be 70 bytes. Only `0`
    may go without one (zero in any unit)."""
    match = _SIZE.match(text)
    unit = match["unit"].lower() if match else None
    if match is not None and not unit and float(match["number"]) == 0:
        return 0
    if match is None or unit not in _UNITS:
        hint = " (a unit is required)" if match is not None and not unit else ""
        raise InvalidArgument(
            f"bad size {text!r}{hint}; expected a number with a unit: B, KiB, MiB, GiB, TiB (binary) "
            "or KB, MB, GB, TB (decimal), e.g. 24GiB"
        )
    return int(float(match["number"]) * _UNITS[unit])


def format_bytes(count: float) -> str:
    """A byte count for people, in binary IEC units with two decimals: `23.50 GiB`, `512.00 KiB`,
    `100 B`. Every human-readable size moeqos prints goes through here (JSON keeps plain bytes)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{int(count)} B"


def parse_budget(text: str) -> TierBudget:
    """Parse `TIER=SIZE`, e.g. `cuda:0=24GiB`."""
    tier, sep, size = text.partition("=")
    if not sep:
        raise InvalidArgument(f"bad budget {text!r}; expected TIER=SIZE, e.g. cuda:0=24GiB")
    try:
        return TierBudget(validate_tier(tier.strip()), parse_bytes(size))
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


def merge_budgets(base: tuple[TierBudget, ...], overrides: list[TierBudget]) -> tuple[TierBudget, ...]:
    """`base` with each override replacing (or adding) the tier of the same name, order kept."""
    merged = {b.name: b for b in base}
    merged.update({b.name: b for b in overrides})
    return tuple(merged.values())
