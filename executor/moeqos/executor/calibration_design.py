"""Designed calibration plans: the mixed plans whose perplexity the profile measures to fit the quality
model where the planner works, not only at the uniform corners.

A planner that mixes precisions puts the lossy precision on the experts its signal calls safest, so
the fit must see plans like those (and some that contradict the signal, so a wrong ranking shows up as
a poor fit instead of being fitted away). Per quantized precision q, with the rest of the experts in
the reference precision:

    q on the safest SAFE_SHARES of the experts (by q's signal) and on the riskiest RISKY_SHARE.

int2 gets only its smallest safe share: no planner puts int2 on half a model, and its damage there is
far outside the linear regime the model assumes. int8 gets none: it is nearly lossless (+0.5% for the
whole model on the default model), so a part of it would measure only the noise of the perplexity. Pure (no torch): plans from a signal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from moeqos.core.plan import Assignment, Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import Grid
from moeqos.core.sensitivity import safest_first

SAFE_SHARES = (0.25, 0.5)
"""Fractions of the experts put in a quantized precision, safest first."""
RISKY_SHARE = 0.25
"""Fraction of the experts, riskiest first, in one contrasting plan per precision."""
INT2_SHARE = 0.125
"""The one int2 design point: the safest eighth."""


def designed_plans(
    signal: Mapping[Precision, Grid],
    reference: Precision,
    precisions: Sequence[Precision],
    tier: str,
    group_size: int,
) -> list[Plan]:
    """Mixed plans for every non-float precision in `precisions` (see module docstring)."""
    plans = []
    for q in precisions:
        if q.is_float or q == Precision.INT8 or q not in signal:
            continue
        order = safest_first(signal[q])
        if q.bits == 2:
            picks = [order[: _count(order, INT2_SHARE)]]
        else:
            picks = [order[: _count(order, s)] for s in SAFE_SHARES]
            picks.append(order[::-1][: _count(order, RISKY_SHARE)])
        plans += [_mixed(signal[q], set(p), q, reference, tier, group_size) for p in picks]
    return plans


def _count(order: Sequence[object], share: float) -> int:
    return max(1, round(len(order) * share))


def _mixed(
    shape: Grid,
    chosen: set[tuple[int, int]],
    precision: Precision,
    reference: Precision,
    tier: str,
    group_size: int,
) -> Plan:
    lossy, full = Assignment(precision, tier), Assignment(reference, tier)
    rows = tuple(
        tuple(lossy if (layer, expert) in chosen else full for expert in range(len(row)))
        for layer, row in enumerate(shape)
    )
    return Plan(rows, group_size)
