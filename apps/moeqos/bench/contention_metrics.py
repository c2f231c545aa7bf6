"""What the contention section reports, computed from a trace: token times, plan changes, the neighbour's
start and stop. Pure functions of plain lists (seconds since the trace began), so tests can feed them.

A 1-second window k covers [k, k + 1) and its rate is the tokens stamped in it (what a client saw,
gaps between requests included).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

QUALITY_TOLERANCE = 0.01
"""A plan counts as the quality plan back when its predicted perplexity is within this of it."""
RECOVERED_WINDOWS = 3
"""The floor counts as met again at the first of this many consecutive windows that meet it."""


@dataclass(frozen=True)
class Trace:
    """One run of the scenario."""

    token_times: tuple[float, ...]
    """When each token arrived at the client."""
    plans: tuple[tuple[float, str], ...]
    """(time, plan spec) whenever the plan in force was seen to change (the first: the starting plan)."""
    neighbour_start: float
    neighbour_stop: float
    end: float
    switches: tuple[tuple[float, int, float], ...] = ()
    """(time, experts changed, seconds) of each plan switch seen, as the executor reported it."""


@dataclass(frozen=True)
class ContentionMetrics:
    """The section's numbers for one mode (closed or open loop)."""

    windows: int
    fraction_met: float
    """Windows with at least `floor` tokens over all windows."""
    recover_s: float | None
    """From the neighbour's start to the first of RECOVERED_WINDOWS windows meeting the floor again
    (0: never missed); None: not while the neighbour ran."""
    quality_back_s: float | None
    """From the neighbour's stop until the plan in force before the start, or one within
    QUALITY_TOLERANCE of its perplexity, is back (0: it never left); None: not within the run."""
    replans_on_start: int
    """Plan changes between the neighbour's start and stop."""
    replans_on_stop: int
    """Plan changes after the stop."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_rates(token_times: Sequence[float], end: float) -> list[int]:
    """Tokens in each whole 1-second window [k, k + 1) before `end`."""
    counts = [0] * math.floor(end)
    for t in token_times:
        if 0 <= t < len(counts):
            counts[int(t)] += 1
    return counts


def recovery_seconds(rates: Sequence[int], floor: float, start: float, stop: float) -> float | None:
    """Seconds from `start` to the first of RECOVERED_WINDOWS windows in a row meeting `floor` after the
    first miss (0: no window missed while the neighbour ran, from `start` to `stop`: a miss after it
    stopped is not the neighbour's); None: not before `stop`."""
    met = [r >= floor for r in rates]
    first = math.ceil(start)
    missed = next((k for k in range(first, min(len(met), int(stop))) if not met[k]), None)
    if missed is None:
        return 0.0
    for k in range(missed + 1, min(len(met), int(stop)) - RECOVERED_WINDOWS + 1):
        if all(met[k : k + RECOVERED_WINDOWS]):
            return float(k - start)
    return None


def plan_at(plans: Sequence[tuple[float, str]], t: float) -> str:
    """The plan in force at `t` (the last change at or before it)."""
    spec = plans[0][1]
    for when, changed in plans:
        if when <= t:
            spec = changed
    return spec


def quality_back_seconds(
    plans: Sequence[tuple[float, str]],
    start: float,
    stop: float,
    perplexity: Callable[[str], float] | None = None,
) -> float | None:
    """Seconds from `stop` until the plan in force just before `start` is back (0: never left). With
    `perplexity` (a plan spec's predicted perplexity), any plan within QUALITY_TOLERANCE of that plan's
    perplexity counts as back: a re-plan from a slightly different calibration may pick a plan of the
    same quality that differs in a few experts."""
    quality = plan_at(plans, start)

    def as_good(spec: str) -> bool:
        if perplexity is None or spec == quality:
            return spec == quality
        return perplexity(spec) <= perplexity(quality) * (1 + QUALITY_TOLERANCE)

    if all(as_good(spec) for when, spec in plans if when >= start):
        return 0.0
    if as_good(plan_at(plans, stop)):
        return 0.0
    back = [when for when, spec in plans if when > stop and as_good(spec)]
    return back[0] - stop if back else None


def summarize(
    trace: Trace, floor: float, perplexity: Callable[[str], float] | None = None
) -> ContentionMetrics:
    rates = window_rates(trace.token_times, trace.end)
    changes = [when for when, _ in trace.plans[1:]]
    return ContentionMetrics(
        windows=len(rates),
        fraction_met=sum(r >= floor for r in rates) / len(rates) if rates else 0.0,
        recover_s=recovery_seconds(rates, floor, trace.neighbour_start, trace.neighbour_stop),
        quality_back_s=quality_back_seconds(
            trace.plans, trace.neighbour_start, trace.neighbour_stop, perplexity
        ),
        replans_on_start=sum(trace.neighbour_start <= w < trace.neighbour_stop for w in changes),
        replans_on_stop=sum(w >= trace.neighbour_stop for w in changes),
    )
