"""The frontier's live prediction: a plan's speed from the profile recalibrated on other plans' steps."""

from __future__ import annotations

import dataclasses

import pytest
from moeqos.bench.context import Speed
from moeqos.bench.live_prediction import live_tokens_per_s, step_records
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile
from moeqos.planner.latency_model import LatencyModel

from tests.planner.planner_fixtures import synthetic_profile


def _host(profile: Profile, fixed_scale: float, call_scale: float) -> Profile:
    """What the machine does now: the profile with its fixed cost and calls scaled."""
    calls = tuple(dataclasses.replace(c, seconds=c.seconds * call_scale) for c in profile.call_costs)
    return dataclasses.replace(profile, fixed_seconds=profile.fixed_seconds * fixed_scale, call_costs=calls)


def _measured(host: LatencyModel, plan: Plan, tokens: int = 32) -> tuple[Plan, Speed]:
    rate = host.predict_tokens_per_s(plan)
    return plan, Speed(rate, (rate, rate, rate), tokens)


def test_a_plan_is_predicted_from_the_host_the_other_plans_saw() -> None:
    profile = synthetic_profile(layers=3, experts=4, tiers=("cpu",))
    layers, experts = 3, 4
    bf16, int4 = (Plan.uniform(layers, experts, p, "cpu") for p in (Precision.BF16, Precision.INT4))
    mixed = bf16.with_layers([0], Precision.INT4)
    host = LatencyModel.fit(_host(profile, 3.0, 1.6))  # a slower host than the profile's
    history = [_measured(host, bf16), _measured(host, int4)]
    truth = host.predict_tokens_per_s(mixed)
    assert LatencyModel.fit(profile).predict_tokens_per_s(mixed) > 1.5 * truth
    assert live_tokens_per_s(profile, mixed, history) == pytest.approx(truth, rel=0.03)
    assert live_tokens_per_s(profile, mixed, []) == LatencyModel.fit(profile).predict_tokens_per_s(mixed)


def test_only_the_last_plans_are_fitted() -> None:
    profile = synthetic_profile(layers=3, experts=4, tiers=("cpu",))
    bf16, int4 = (Plan.uniform(3, 4, p, "cpu") for p in (Precision.BF16, Precision.INT4))
    then, now = LatencyModel.fit(_host(profile, 10.0, 10.0)), LatencyModel.fit(_host(profile, 2.0, 2.0))
    history = [_measured(then, bf16), _measured(now, bf16), _measured(now, int4)]
    mixed = bf16.with_layers([1], Precision.INT4)
    assert live_tokens_per_s(profile, mixed, history) == pytest.approx(
        now.predict_tokens_per_s(mixed), rel=0.03
    )


def test_step_records_are_each_runs_tokens_after_the_first_at_its_rate() -> None:
    plan = Plan.uniform(1, 2, Precision.BF16, "cpu")
    records = step_records([(plan, Speed(5.0, (4.0, 5.0), 3))])
    assert [r.seconds for r in records] == [0.25, 0.25, 0.2, 0.2]
    assert all(r.plan is plan for r in records) and records[-1].end == pytest.approx(0.9)
