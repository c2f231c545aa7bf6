"""What a plan needs per tier is a pure calculation (`plan_bytes`); validation compares it with the
budgets (`validate_plan`), never the other way round."""

from __future__ import annotations

import pytest
from moeqos.core.errors import InvalidArgument, OverBudget
from moeqos.core.plan import Assignment, Plan
from moeqos.core.precision import Precision, expert_bytes
from moeqos.executor.budgets import plan_bytes, validate_plan

from tests.executor.tiny import EXPERTS, LAYERS

DIMS = (64, 128)
"""(hidden, intermediate) of the tiny checkpoint."""
MIXED = Plan(
    (
        tuple(Assignment(Precision.INT4, "cpu") for _ in range(EXPERTS)),
        tuple(Assignment(Precision.INT8, "disk") for _ in range(EXPERTS)),
    ),
    group_size=32,
)


def _need() -> dict[str, int]:
    return {
        "cpu": EXPERTS * expert_bytes(*DIMS, Precision.INT4, 32),
        "disk": EXPERTS * expert_bytes(*DIMS, Precision.INT8, 32),
    }


def test_plan_bytes_counts_every_tier_the_plan_uses() -> None:
    assert plan_bytes(MIXED, DIMS) == _need()


def test_validate_plan_accepts_an_exact_fit_and_names_the_tier_over_budget() -> None:
    validate_plan(MIXED, (LAYERS, EXPERTS), DIMS, _need())
    with pytest.raises(OverBudget, match="disk needs"):
        validate_plan(MIXED, (LAYERS, EXPERTS), DIMS, {**_need(), "disk": _need()["disk"] - 1})


def test_validate_plan_rejects_unknown_tiers_shapes_and_group_sizes() -> None:
    with pytest.raises(InvalidArgument, match="disk"):
        validate_plan(MIXED, (LAYERS, EXPERTS), DIMS, {"cpu": 1 << 40})
    with pytest.raises(InvalidArgument):
        validate_plan(MIXED, (LAYERS + 1, EXPERTS), DIMS, _need())
    with pytest.raises(InvalidArgument, match="group_size"):
        validate_plan(MIXED, (LAYERS, EXPERTS), (64, 96 + 8), _need())


def test_a_named_group_may_leave_a_short_last_group() -> None:
    """int4g32 names its group, so the plan's group_size check does not apply to it: on intermediate
    104 (3 groups of 32 and one of 8) it is charged for four groups a row and accepted (issue 20)."""
    named = Plan.uniform(LAYERS, EXPERTS, Precision.INT4_G32, "cpu", group_size=64)
    dims = (64, 96 + 8)
    need = {"cpu": LAYERS * EXPERTS * expert_bytes(*dims, Precision.INT4_G32)}
    validate_plan(named, (LAYERS, EXPERTS), dims, need)
    assert plan_bytes(named, dims) == need
    with pytest.raises(InvalidArgument, match="group_size 64"):
        validate_plan(Plan.uniform(LAYERS, EXPERTS, Precision.INT4, "cpu"), (LAYERS, EXPERTS), dims, need)
