"""The latency model: curve fits recover known costs, disk hit rates, predictions, JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.planner.curves import fit_curve
from moeqos.planner.latency_model import LatencyModel
from moeqos.planner.quality_model import QualityModel
from moeqos.planner.solver import PlanRequest, solve

from tests.planner.planner_fixtures import TRUE_BANDWIDTH, TRUE_LOAD, TRUE_OVERHEAD, synthetic_profile

PRECISIONS = (Precision.BF16, Precision.INT8, Precision.INT4)


@pytest.mark.parametrize("noise, rtol", [(0.0, 1e-6), (0.02, 0.2)])
def test_fit_recovers_tier_curves(noise: float, rtol: float) -> None:
    profile = synthetic_profile(precisions=PRECISIONS, tiers=("cuda:0", "cpu", "disk"), noise=noise, seed=3)
    model = LatencyModel.fit(profile)
    for tier in ("cuda:0", "cpu"):
        assert model.curves[tier].bandwidth_bps == pytest.approx(TRUE_BANDWIDTH[tier], rel=rtol)
        assert model.curves[tier].overhead_s == pytest.approx(TRUE_OVERHEAD[tier], rel=rtol)
    assert model.load_curve is not None
    assert model.load_curve.bandwidth_bps == pytest.approx(TRUE_LOAD[1], rel=rtol)
    assert set(model.residuals) == {"cuda:0", "cpu", "load"}
    assert all(len(r) == len(PRECISIONS) for r in model.residuals.values())
    if noise == 0:
        assert max(abs(x) for r in model.residuals.values() for x in r) < 1e-12


def test_single_size_curve_is_pure_bandwidth() -> None:
    curve = fit_curve([(1000, 2e-6), (1000, 4e-6), (1000, 3e-6)])
    assert curve.overhead_s == 0
    assert curve.bandwidth_bps == pytest.approx(1000 / 3e-6)


def test_measured_points_are_reproduced_and_unmeasured_precisions_predicted() -> None:
    profile = synthetic_profile(precisions=PRECISIONS, noise=0.05, seed=1)
    model = LatencyModel.fit(profile)
    for cost in profile.call_costs:  # per-precision factors keep each measured median
        assert model.call_seconds(cost.precision, cost.tier) == pytest.approx(cost.seconds, rel=1e-9)
    int2 = model.call_seconds(Precision.INT2, "cpu")  # not measured: the cpu curve at int2's bytes
    assert int2 == pytest.approx(model.curves["cpu"].seconds(model.expert_bytes[Precision.INT2]))


def test_predict_seconds_is_fixed_plus_frequency_weighted_costs() -> None:
    profile = synthetic_profile(precisions=PRECISIONS, seed=2)
    model = LatencyModel.fit(profile)
    plan = Plan.uniform(2, 3, Precision.INT8, "cpu")
    expected = profile.fixed_seconds + 2 * 2 * model.call_seconds(Precision.INT8, "cpu")  # rows sum to top_k
    assert model.predict_seconds(plan) == pytest.approx(expected)
    assert model.predict_tokens_per_s(plan) == pytest.approx(1 / expected)


@pytest.mark.parametrize("slots, expect_hits", [(0, 0.0), (6, 1.0)])
def test_disk_experts_pay_the_expected_load(slots: int, expect_hits: float) -> None:
    profile = synthetic_profile(precisions=PRECISIONS, tiers=("cpu", "disk"), pool_slots=slots)
    model = LatencyModel.fit(profile)
    plan = Plan.uniform(2, 3, Precision.INT4, "disk")
    compute = model.call_seconds(Precision.INT4, "cpu")
    load = model.load_seconds(Precision.INT4)
    expected = profile.fixed_seconds + 4 * (compute + (1 - expect_hits) * load)
    assert model.predict_seconds(plan) == pytest.approx(expected)


def test_loads_that_cost_more_than_their_bytes_are_priced_as_measured() -> None:
    """An int4 load that repacks its kernel layout costs far more than a bf16 load of more bytes."""
    profile = synthetic_profile(precisions=PRECISIONS, tiers=("cpu", "disk"), pool_slots=1)
    slow = {Precision.INT4: 8.0}
    loads = tuple(
        dataclasses.replace(c, seconds=c.seconds * slow.get(c.precision, 1.0)) for c in profile.load_costs
    )
    model = LatencyModel.fit(dataclasses.replace(profile, load_costs=loads))
    for cost in loads:
        assert model.load_seconds(cost.precision) == pytest.approx(cost.seconds, rel=0.25)
    assert model.load_seconds(Precision.INT4) > model.load_seconds(Precision.BF16)
    assert model.load_factors[Precision.INT4] > 2 > model.load_factors[Precision.BF16]


def test_json_round_trip_keeps_predictions_and_identity() -> None:
    profile = synthetic_profile(
        precisions=PRECISIONS, tiers=("cuda:0", "cpu", "disk"), pool_slots=2, noise=0.01
    )
    model = LatencyModel.fit(profile)
    again = LatencyModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    assert again.identity.matches(profile) and again.identity.fingerprint == profile.model.fingerprint
    plan = Plan.uniform(2, 3, Precision.INT8, "disk")
    assert again.predict_seconds(plan) == model.predict_seconds(plan)


def test_precisions_sharing_a_layout_share_their_measured_cost() -> None:
    """int4g32 timed 10% faster than int4 by noise: one kernel (group sizes of one bit-width), so one
    factor over the bytes curve; g32 then costs more (its extra scales), and the fastest plan does not
    take it for that noise. int3 (bit-packed, its own kernel) is kept apart."""
    precisions = (Precision.BF16, Precision.INT8, Precision.INT4_G32, Precision.INT4, Precision.INT3)
    profile = synthetic_profile(precisions=precisions, tiers=("cpu", "disk"), pool_slots=2)
    noisy = {Precision.INT4_G32: 0.9, Precision.INT3: 0.9}
    calls = tuple(
        dataclasses.replace(c, seconds=c.seconds * noisy.get(c.precision, 1.0)) for c in profile.call_costs
    )
    loads = tuple(
        dataclasses.replace(c, seconds=c.seconds * noisy.get(c.precision, 1.0)) for c in profile.load_costs
    )
    model = LatencyModel.fit(dataclasses.replace(profile, call_costs=calls, load_costs=loads))
    assert model.call_seconds(Precision.INT4_G32, "cpu") > model.call_seconds(Precision.INT4, "cpu")
    assert model.load_seconds(Precision.INT4_G32) > model.load_seconds(Precision.INT4)
    assert model.factors["int4g32@cpu"] == model.factors["int4@cpu"]
    assert model.factors["int3@cpu"] != model.factors["int4@cpu"]
    assert model.call_seconds(Precision.INT8, "cpu") != model.call_seconds(Precision.INT4, "cpu")
    noisy_profile = dataclasses.replace(profile, call_costs=calls, load_costs=loads)
    fastest = solve(
        PlanRequest(noisy_profile, QosTarget(objective=Objective.SPEED)),
        model,
        QualityModel.fit(noisy_profile),
    )
    assert Precision.INT4_G32 not in {a.precision for _, a in fastest.plan.items()}
