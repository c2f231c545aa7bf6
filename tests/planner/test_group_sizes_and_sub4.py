"""The planner chooses group sizes and sub-4-bit experts like any other precision (issues 20 and 18):
the smaller group when the budget holds it and the profile says it is better, a mix when it does not,
and bit-packed int3/int2 when only they fit the memory budget."""

from __future__ import annotations

import pytest
from moeqos.core.errors import InfeasibleTarget
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.tier import TierBudget
from moeqos.planner.frontier import frontier
from moeqos.planner.solver import PlanRequest, solve

from tests.planner.planner_fixtures import synthetic_profile

P = Precision
LAYERS, EXPERTS = 2, 4
GROUPS = (P.BF16, P.INT4_G32, P.INT4, P.INT4_G128)
SUB4 = (P.BF16, P.INT4, P.INT3, P.INT2)
BEST_QUALITY = QosTarget(objective=Objective.QUALITY)


def _profile(precisions: tuple[P, ...]):
    return synthetic_profile(LAYERS, EXPERTS, precisions, ("cpu",), seed=3, quality_plans=16)


def _all(profile, precision: P) -> int:
    return LAYERS * EXPERTS * profile.model.expert_bytes(precision)


def _best(profile, budget: int, allowed: tuple[P, ...]):
    request = PlanRequest(
        profile, BEST_QUALITY, (TierBudget("cpu", budget),), allowed_precisions=frozenset(allowed)
    )
    return solve(request)


def test_the_smaller_group_is_chosen_when_the_budget_holds_it() -> None:
    profile = _profile(GROUPS)
    assert profile.model.expert_bytes(P.INT4_G32) > profile.model.expert_bytes(P.INT4)  # more scales
    result = _best(profile, _all(profile, P.INT4_G32), GROUPS[1:])
    assert result.plan.counts() == {result.plan[0, 0]: LAYERS * EXPERTS}
    assert result.plan[0, 0].precision == P.INT4_G32


def test_a_budget_between_group_sizes_mixes_them() -> None:
    profile = _profile(GROUPS)
    budget = _all(profile, P.INT4)  # all g64 fits, all g32 does not
    result = _best(profile, budget, GROUPS[1:])
    used = {a.precision for a in result.plan.counts()}
    assert P.INT4_G32 in used and used != {P.INT4_G32}
    assert result.bytes_per_tier["cpu"] <= budget


def test_frontier_offers_group_size_choices() -> None:
    profile = _profile(GROUPS)
    points = frontier(profile, points=10)
    used = {a.precision for point in points for a in point.plan.counts()}
    assert P.INT4_G32 in used


def test_a_budget_below_all_int4_is_met_only_with_sub4_experts() -> None:
    profile = _profile(SUB4)
    budget = int(0.9 * _all(profile, P.INT4))
    with pytest.raises(InfeasibleTarget):
        _best(profile, budget, (P.BF16, P.INT4))
    result = _best(profile, budget, SUB4)
    used = {a.precision for a in result.plan.counts()}
    assert used & {P.INT3, P.INT2}
    assert result.bytes_per_tier["cpu"] <= budget
    # the quality objective spends the budget on int4 where it can: int3 before int2
    assert P.INT4 in used and P.INT2 not in used
