"""Online recalibration: the profile's latency coefficients re-fitted to the decode steps just served.

The profile prices a decode step of plan P as

    t(P) = fixed(P) + calls(P),   calls(P) = sum over experts of frequency[l][e] * cost(prec, tier)

with fixed(P) the profile's fixed seconds plus what P's dense part adds over the dense precision (a
lossy attention or head saves time outside the experts: moeqos.core.dense.added_seconds, priced as the
planner's latency model prices it), measured once, on a quiet machine. Live, the machine changes
(other processes take cores), so the executor fits two scales to the steps of the last few seconds,

    t_step ~= a * fixed(plan of the step) + b * calls(plan of the step)

by ridge regression. The prior is the measured profile's split between the two, at the level the
live steps show: it pulls (a, b) towards (s, s), where s is the single scale that best fits the steps
(t ~= s * (fixed + calls)), with the weight of `prior_steps` steps. With one plan only the data say
a*f + b*c and the prior splits it in proportion to the profile (a = b = s, so the calibrated profile
predicts the rate just measured however far off the measured profile was); once plans change, both
scales are identified. A scale that leaves SCALE_BOUNDS is clamped and the other re-fitted with it
held. The calibrated profile is the measured one with fixed_seconds and every dense cost * a, and every
call cost * b (load costs are left as measured), which the planner fits as usual: its prediction of a
plan is then a * fixed(P) + b * calls(P), this module's. Regressors use the profile's expected
calls per token (its frequencies), the same quantity the planner's latency model uses; the step times
are a stream's intervals between tokens (moeqos.executor.live_stats), the rate its client sees.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

from moeqos.core.dense import added_seconds, timed_within_fixed
from moeqos.core.plan import Plan
from moeqos.core.profile import CallCost, Profile
from moeqos.core.service_types import LiveCalibration
from moeqos.executor.live_stats import StepRecord, window_span

SCALE_BOUNDS = (0.05, 20.0)
"""Scales are clamped here: a window of garbage must not price a plan at zero or forever."""
OUTLIER_FACTOR = 3.0
"""Steps longer than this times the window's median are clipped to it (a GC pause, a page fault)."""


def apply(calibration: LiveCalibration, profile: Profile) -> Profile:
    """`profile` with its fixed cost and dense costs scaled by the calibration's fixed scale, its call
    costs by the call scale."""
    if calibration.steps == 0:
        return profile
    fixed, calls = calibration.fixed_scale, calibration.call_scale
    return dataclasses.replace(
        profile,
        fixed_seconds=profile.fixed_seconds * fixed,
        dense_costs=tuple(dataclasses.replace(c, seconds=c.seconds * fixed) for c in profile.dense_costs),
        call_costs=tuple(dataclasses.replace(c, seconds=c.seconds * calls) for c in profile.call_costs),
    )


def predict_seconds(calibration: LiveCalibration, profile: Profile, plan: Plan) -> float:
    """Expected decode seconds per token of `plan` under the calibrated profile."""
    fixed, calls = regressors(profile, plan)
    return calibration.fixed_scale * fixed + calibration.call_scale * calls


def regressors(profile: Profile, plan: Plan) -> tuple[float, float]:
    """(fixed seconds with the dense part's, expected expert-call seconds) per token of `plan` under the
    measured profile."""
    costs = _cost_table(profile.call_costs)
    calls = 0.0
    for (layer, expert), assignment in plan.items():
        cost = costs.get((assignment.precision.value, assignment.tier))
        if cost is None:  # e.g. a disk expert computes in the pool's tier: any tier of its precision
            cost = costs.get((assignment.precision.value, ""), 0.0)
        calls += profile.frequency[layer][expert] * cost
    dense = timed_within_fixed(profile.dense_costs, profile.dense_precision, profile.fixed_seconds)
    return profile.fixed_seconds + added_seconds(dense, profile.dense_precision, plan.dense), calls


def _cost_table(call_costs: Sequence[CallCost]) -> dict[tuple[str, str], float]:
    table = {(c.precision.value, c.tier): c.seconds for c in call_costs}
    for c in call_costs:
        table.setdefault((c.precision.value, ""), c.seconds)
    return table


def fit(profile: Profile, steps: Sequence[StepRecord], prior_steps: float = 4.0) -> LiveCalibration:
    """Ridge fit of (fixed_scale, call_scale) to `steps`, towards the common scale (see the module)."""
    if not steps:
        return LiveCalibration()
    per_plan: dict[int, tuple[float, float]] = {}
    rows = []
    for step in steps:
        x = per_plan.get(id(step.plan))
        if x is None:  # once per plan: a plan's regressors walk all its experts
            x = per_plan[id(step.plan)] = regressors(profile, step.plan)
        rows.append((x[0], x[1], step.seconds))
    cap = OUTLIER_FACTOR * statistics.median(t for _, _, t in rows)
    rows = [(f, c, min(t, cap)) for f, c, t in rows]
    total = sum((f + c) ** 2 for f, c, _ in rows)
    if total <= 0:
        return LiveCalibration()
    common = _clamp(sum((f + c) * t for f, c, t in rows) / total)  # t ~= s * (f + c)
    # Prior: prior_steps * ((a-s)^2 * mean f^2 + (b-s)^2 * mean c^2), seconds of an average step.
    pf = prior_steps * sum(f * f for f, _, _ in rows) / len(rows)
    pc = prior_steps * sum(c * c for _, c, _ in rows) / len(rows)
    a11 = sum(f * f for f, _, _ in rows) + pf
    a12 = sum(f * c for f, c, _ in rows)
    a22 = sum(c * c for _, c, _ in rows) + pc
    r1 = sum(f * t for f, _, t in rows) + pf * common
    r2 = sum(c * t for _, c, t in rows) + pc * common
    det = a11 * a22 - a12 * a12
    if det <= 0:
        return LiveCalibration(common, common, len(steps), window_span(steps))
    fixed_scale = (r1 * a22 - r2 * a12) / det
    call_scale = (a11 * r2 - a12 * r1) / det
    # Clamp the scale furthest out of bounds and re-fit the other with it held (clamping both
    # independently would leave the pair predicting neither the steps nor the prior).
    fixed_excess, call_excess = _excess(fixed_scale), _excess(call_scale)
    if fixed_excess > 0 and fixed_excess >= call_excess:
        fixed_scale = _clamp(fixed_scale)
        call_scale = _clamp((r2 - a12 * fixed_scale) / a22)
    elif call_excess > 0:
        call_scale = _clamp(call_scale)
        fixed_scale = _clamp((r1 - a12 * call_scale) / a11)
    return LiveCalibration(fixed_scale, call_scale, len(steps), window_span(steps))


def _excess(scale: float) -> float:
    """How far (as a log ratio) `scale` lies outside SCALE_BOUNDS; 0 inside, inf when not positive."""
    low, high = SCALE_BOUNDS
    if scale <= 0:
        return math.inf
    return max(math.log(low / scale), math.log(scale / high), 0.0)


def _clamp(scale: float) -> float:
    low, high = SCALE_BOUNDS
    return min(max(scale, low), high)
