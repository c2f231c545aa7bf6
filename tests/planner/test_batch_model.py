"""The latency model's batch dimension on synthetic profiles: a step on B streams runs each distinct
routed expert once on its tokens (moeqos.planner.batch_model), and the solver plans a floor per stream."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
from moeqos.core.batch import BatchCall, BatchStep
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.core.plan import Assignment, Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile
from moeqos.core.qos import QosTarget
from moeqos.planner.latency_model import LatencyModel
from moeqos.planner.solver import PlanRequest, solve

from tests.planner.planner_fixtures import synthetic_profile

GROWTH = {Precision.BF16: 0.05, Precision.INT4: 0.2}
"""Extra cost per extra token of a call, over a one-token call (int4 dequantizes per token)."""
STEPS = (BatchStep(4, 1.2, 1.1), BatchStep(16, 1.8, 1.3))


def _batched(profile: Profile, steps: tuple[BatchStep, ...] = STEPS) -> Profile:
    calls = tuple(BatchCall(p, "cpu", 16, 1 + 15 * g) for p, g in GROWTH.items())
    return replace(profile, batch_calls=calls, batch_steps=steps)


def _profile(seed: int = 0, layers: int = 2, experts: int = 3) -> Profile:
    return _batched(synthetic_profile(layers, experts, tiers=("cpu",), seed=seed))


def test_one_stream_is_the_one_stream_model_exactly() -> None:
    profile = _profile()
    plan = Plan.uniform(2, 3, Precision.INT4, "cpu")
    plain = LatencyModel.fit(replace(profile, batch_calls=(), batch_steps=()))
    batched = LatencyModel.fit(profile)
    assert batched.at_concurrency(1) is batched
    assert batched.predict_seconds(plan) == pytest.approx(plain.predict_seconds(plan), rel=1e-12)
    freq = np.asarray(profile.frequency)
    assert plain.predict_seconds(plan) == pytest.approx(
        profile.fixed_seconds + float((freq * plain.call_seconds(Precision.INT4, "cpu")).sum())
    )


@pytest.mark.parametrize("rows", [2, 4, 9, 16])
def test_a_step_costs_what_simulated_routing_costs(rows: int) -> None:
    """Top-1 routing (one expert per token, drawn by frequency) makes the model's expectation exact:
    each distinct expert once per step at call * (1 + growth * (n - 1)), n its tokens."""
    profile = _batched(synthetic_profile(1, 6, tiers=("cpu",), seed=3))
    freq = np.asarray(profile.frequency)[0] / 2  # top-1: each row sums to 1
    profile = replace(profile, frequency=(tuple(freq),))
    model = LatencyModel.fit(profile).at_concurrency(rows)
    plan = Plan(((Assignment(Precision.BF16, "cpu"),) * 3 + (Assignment(Precision.INT4, "cpu"),) * 3,))
    call = [model.call_seconds(a.precision, a.tier) for a in plan.assignments[0]]
    growth = [GROWTH[a.precision] for a in plan.assignments[0]]
    rng = np.random.default_rng(0)
    draws = rng.choice(6, size=(40000, rows), p=freq)  # [steps, rows]
    counts = np.stack([(draws == e).sum(axis=1) for e in range(6)], axis=1)  # [steps, E]
    per_step = sum(
        np.where(counts[:, e] > 0, call[e] * (1 + growth[e] * (counts[:, e] - 1)), 0.0) for e in range(6)
    )
    scale = model.batch.expert_scale(rows)
    expected = profile.fixed_seconds * model.batch.fixed_ratio(rows) + scale * float(np.mean(per_step))
    assert model.predict_seconds(plan) == pytest.approx(expected, rel=0.01)
    assert model.predict_aggregate_tokens_per_s(plan) == pytest.approx(rows / model.predict_seconds(plan))


def test_measured_rows_are_reproduced_and_others_interpolated() -> None:
    batch = LatencyModel.fit(_profile()).batch
    assert [batch.fixed_ratio(r) for r in (1, 4, 16)] == pytest.approx([1.0, 1.2, 1.8])
    assert batch.fixed_ratio(10) == pytest.approx(1.5)
    assert batch.fixed_ratio(28) == pytest.approx(2.4)  # the last slope, extrapolated
    assert [batch.expert_scale(r) for r in (1, 2, 4, 16, 64)] == pytest.approx(
        [1.0, 1.0 + 0.1 / 3, 1.1, 1.3, 1.3]
    )


def test_batching_shares_the_expert_reads() -> None:
    """At 16 streams each stream is slower, but all of them together far outrun one stream."""
    model = LatencyModel.fit(_profile())
    plan = Plan.uniform(2, 3, Precision.BF16, "cpu")
    one, many = model.predict_tokens_per_s(plan), model.at_concurrency(16)
    assert many.predict_tokens_per_s(plan) < one < many.predict_aggregate_tokens_per_s(plan) / 4


def _brute_force(profile: Profile, rows: int, floor: float) -> float:
    """The lowest true perplexity proxy (most bf16 experts, by error) of every plan meeting `floor`
    per stream at `rows` streams: here the quality model's prediction of each of the 2^6 plans."""
    from moeqos.planner.quality_model import QualityModel

    latency, quality = LatencyModel.fit(profile).at_concurrency(rows), QualityModel.fit(profile)
    best = float("inf")
    for choice in itertools.product((Precision.BF16, Precision.INT4), repeat=6):
        plan = Plan(tuple(tuple(Assignment(p, "cpu") for p in choice[i * 3 : i * 3 + 3]) for i in range(2)))
        if latency.predict_tokens_per_s(plan) >= floor * (1 - 1e-9):
            best = min(best, quality.predict_perplexity(plan))
    return best


@pytest.mark.parametrize("seed", range(3))
def test_a_floor_is_planned_per_stream_at_the_concurrency(seed: int) -> None:
    """The same floor is harder at 16 streams than at one; the MILP matches brute force at both."""
    profile = _profile(seed)
    fast = LatencyModel.fit(profile).at_concurrency(16)
    bf16, int4 = (Plan.uniform(2, 3, p, "cpu") for p in (Precision.BF16, Precision.INT4))
    floor = (fast.predict_tokens_per_s(bf16) + fast.predict_tokens_per_s(int4)) / 2
    alone = solve(PlanRequest(profile, QosTarget(min_tokens_per_s=floor), tolerance=1e-9))
    batched = solve(PlanRequest(profile, QosTarget(min_tokens_per_s=floor), tolerance=1e-9, concurrency=16))
    assert alone.concurrency == 1 and batched.concurrency == 16
    assert batched.predicted_tokens_per_s >= floor * (1 - 1e-6)
    assert batched.predicted_aggregate_tokens_per_s == pytest.approx(16 * batched.predicted_tokens_per_s)
    assert batched.predicted_tokens_per_s == pytest.approx(fast.predict_tokens_per_s(batched.plan))
    assert batched.predicted_perplexity == pytest.approx(_brute_force(profile, 16, floor), rel=1e-7)
    assert alone.predicted_perplexity == pytest.approx(_brute_force(profile, 1, floor), rel=1e-7)
    assert batched.predicted_perplexity > alone.predicted_perplexity  # fewer bf16 experts fit the floor
    assert "per stream at 16 streams" in batched.notes


def test_concurrency_needs_batch_timings_and_a_sane_count() -> None:
    plain = synthetic_profile(2, 3, tiers=("cpu",))
    target = QosTarget(min_tokens_per_s=1.0)
    with pytest.raises(InvalidArgument, match="no batched step timings"):
        solve(PlanRequest(plain, target, concurrency=4))
    for rows in (0, 5000):
        with pytest.raises(OutOfRange):
            LatencyModel.fit(_profile()).at_concurrency(rows)


def test_json_round_trip_keeps_the_batch_dimension() -> None:
    model = LatencyModel.fit(_profile()).at_concurrency(8)
    again = LatencyModel.from_dict(model.to_dict())
    plan = Plan.uniform(2, 3, Precision.INT4, "cpu")
    assert again == model and again.predict_seconds(plan) == model.predict_seconds(plan)


def test_the_plan_command_plans_per_stream_at_a_concurrency(tmp_path, capsys) -> None:
    from tests.planner.test_units_and_cli import main

    path = tmp_path / "profile.json"
    path.write_text(_profile().to_json())
    assert main(["plan", "--profile", str(path), "--max-ppl-increase", "0.5", "--concurrency", "16"]) == 0
    assert "per stream at 16 streams" in capsys.readouterr().out
    assert (
        main(["plan", "--profile", str(path), "--max-ppl-increase", "0.5", "--concurrency", "4", "--json"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["concurrency"] == 4
    assert doc["predicted_aggregate_tokens_per_s"] == pytest.approx(4 * doc["predicted_tokens_per_s"])
