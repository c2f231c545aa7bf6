"""The speed/quality frontier: Pareto-optimal plans from the most accurate to the fastest.

The two ends are solved directly (minimum perplexity; maximum tokens/s, each with the other metric as
tie-break); of the points between, half minimise perplexity under tokens/s floors evenly spaced in
tokens/s and half maximise tokens/s under perplexity ceilings evenly spaced in log-perplexity, so the
lossy end, where perplexity climbs fast for little speed, is sampled as densely as the fast one. Points
another point beats on both tokens/s and perplexity (possible within the solver's tolerance) are
dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from moeqos.core.errors import InfeasibleTarget, OutOfRange
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.tier import TierBudget
from moeqos.planner.latency_model import LatencyModel
from moeqos.planner.milp import DEFAULT_TOLERANCE
from moeqos.planner.quality_model import QualityModel
from moeqos.planner.solver import PlanRequest, PlanResult, solve
from moeqos.planner.work_pool import checked

DEFAULT_POINTS = 20


def frontier(
    profile: Profile,
    budgets: tuple[TierBudget, ...] = (),
    points: int = DEFAULT_POINTS,
    pins: tuple[PlacementRule, ...] = (),
    latency: LatencyModel | None = None,
    quality: QualityModel | None = None,
    allowed_precisions: frozenset[Precision] | None = None,
    allowed_tiers: frozenset[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    time_limit_s: float = 0.5,
    stop: Callable[[], bool] | None = None,
) -> list[PlanResult]:
    """Up to `points` non-dominated plans, slowest (most accurate) first. Raises InfeasibleTarget when
    no plan fits the budgets at all.

    `stop`, checked before each solve: when it returns True the caller has gone, and StopRequested
    ends the work (moeqos.planner.work_pool)."""
    check = (lambda: None) if stop is None else (lambda: checked(stop))
    if points < 2:
        raise OutOfRange(f"a frontier needs at least 2 points, got {points}")
    latency = latency or LatencyModel.fit(profile)
    quality = quality or QualityModel.fit(profile)
    base = PlanRequest(
        profile,
        QosTarget(objective=Objective.QUALITY),
        budgets,
        pins,
        allowed_precisions,
        allowed_tiers,
        tolerance=tolerance,
        time_limit_s=time_limit_s,
    )
    check()
    accurate = solve(base, latency, quality)
    check()
    fastest = solve(replace(base, target=QosTarget(objective=Objective.SPEED)), latency, quality)
    results = [accurate, fastest]
    inner = points - 2
    floors = np.linspace(
        accurate.predicted_tokens_per_s, fastest.predicted_tokens_per_s, inner - inner // 2 + 2
    )
    log_ceilings = np.linspace(
        np.log(accurate.predicted_perplexity), np.log(fastest.predicted_perplexity), inner // 2 + 2
    )
    targets = [QosTarget(min_tokens_per_s=float(f)) for f in floors[1:-1]]
    targets += [QosTarget(max_perplexity=float(np.exp(c))) for c in log_ceilings[1:-1]]
    for target in targets:
        check()
        try:
            results.append(solve(replace(base, target=target), latency, quality))
        except InfeasibleTarget:
            continue  # the bound sits in a gap the tolerance left; its neighbours cover it
    return pareto(results)


def pareto(results: list[PlanResult]) -> list[PlanResult]:
    """The non-dominated results (no other is at least as fast and strictly better, or vice versa),
    one per distinct (tokens/s, perplexity), ordered by tokens/s ascending."""
    ordered = sorted(results, key=lambda r: (-r.predicted_tokens_per_s, r.predicted_perplexity))
    kept: list[PlanResult] = []
    for result in ordered:
        if not kept or result.predicted_perplexity < kept[-1].predicted_perplexity * (1 - 1e-12):
            kept.append(result)
    return kept[::-1]
