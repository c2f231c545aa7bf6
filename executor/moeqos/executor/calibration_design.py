"""Designed calibration plans: the mixed plans whose perplexity the profile measures to fit the quality
model where the planner works, not only at the uniform corners.

A planner that mixes precisions puts the lossy precision on the experts its signal calls safest, so
the fit must see plans like those (and some that contradict the signal, so a wrong ranking shows up as
a poor fit instead of being fitted away). Per quantized precision q, with the rest of the experts in
the reference precision:

    q on the safest SAFE_SHARES of the experts (by q's signal), and, for the anchor precisions (those
    whose layer KL was measured, whose ranking the signal is), on the riskiest RISKY_SHARE.

The other precisions borrow the anchor's ranking (moeqos.core.sensitivity), so a contrast of their own
would check the same ranking again. int2 gets only its smallest safe share: no planner puts int2 on
half a model, and its damage there is far outside the regime the model fits. A precision whose uniform
plan measured less than NEARLY_LOSSLESS above the reference gets none (int8, and int4 in groups of 32 on
the default model: +0.1% for the whole model): a part of it would measure only the noise of the
perplexity. Pure (no torch): plans from a signal.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

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
NEARLY_LOSSLESS = 0.01
"""A precision whose uniform plan costs less than this perplexity increase gets no designed plans."""


def designed_plans(
    signal: Mapping[Precision, Grid],
    reference: Precision,
    increases: Mapping[Precision, float],
    anchors: Collection[Precision],
    tier: str,
    group_size: int,
) -> list[Plan]:
    """Mixed plans for every non-float precision in `increases` (each uniform plan's measured
    perplexity increase over the reference, ppl / ref - 1) that has a signal, the riskiest-share plan
    for `anchors` only (see module docstring)."""
    plans = []
    for q, increase in increases.items():
        if q.is_float or increase < NEARLY_LOSSLESS or q not in signal:
            continue
        order = safest_first(signal[q])
        if q.bits == 2:
            picks = [order[: _count(order, INT2_SHARE)]]
        else:
            picks = [order[: _count(order, s)] for s in SAFE_SHARES]
        if q in anchors:
            picks.append(order[::-1][: _count(order, RISKY_SHARE)])
        plans += [_mixed(signal[q], set(p), q, reference, tier, group_size) for p in picks]
    return plans


def uniform_increases(
    plans: Sequence[Plan], perplexities: Sequence[float], reference: Precision
) -> dict[Precision, float]:
    """Per precision with a measured uniform plan among `plans`, its perplexity increase over the
    uniform `reference` plan's (infinite for all when the reference was not measured: nothing is then
    known to be nearly lossless)."""
    uniform = {}
    for plan, ppl in zip(plans, perplexities, strict=True):
        counts = plan.counts()
        if len(counts) == 1:
            uniform[next(iter(counts)).precision] = ppl
    base = uniform.get(reference)
    return {q: (ppl / base - 1 if base else math.inf) for q, ppl in uniform.items()}


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
