"""The profile's batch timings on the tiny random model: many-token expert calls, decode steps on
several rows at once, and the batch-aware latency model fitted to them."""

from __future__ import annotations

import pytest
import torch
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile
from moeqos.executor.batch_costs import BatchCredit, _batch_step, batch_calls, batch_steps
from moeqos.executor.costs import calibrate, call_costs

from tests.executor.tiny import EXPERTS, LAYERS

PRECISIONS = (Precision.FP32, Precision.INT8)


def test_a_batch_step_decodes_one_token_for_every_row(runtime) -> None:
    ids = runtime.encode("the quick brown fox jumps over the lazy dog and runs away")
    step = _batch_step(runtime, [ids[0:4], ids[4:8], ids[8:12]])
    assert tuple(step().shape[:2]) == (3, 1)  # [B, 1, V]


def test_the_credit_counts_each_distinct_expert_once_with_its_growth(runtime) -> None:
    plan = Plan.uniform(LAYERS, EXPERTS, Precision.FP32, "cpu")
    credit = BatchCredit(runtime, plan, {(Precision.FP32, "cpu"): 2.0}, {(Precision.FP32, "cpu"): 0.5})
    credit.observe(0, torch.zeros(3, 64), torch.tensor([[0, 1], [0, 2], [0, 1]]))  # [T, K]
    # expert 0 on 3 tokens, expert 1 on 2, expert 2 on 1: 2 * (1 + 0.5 * 2) + 2 * 1.5 + 2 * 1
    assert credit.total == pytest.approx(4.0 + 3.0 + 2.0)


def test_batch_calls_and_steps_are_measured(runtime) -> None:
    ids = runtime.encode("the quick brown fox jumps over the lazy dog " * 6)
    x = torch.randn(16, runtime.shape[0])
    calls = batch_calls(runtime, x, PRECISIONS, 2, 64)
    assert [(c.precision, c.tier, c.tokens) for c in calls] == [(p, "cpu", 16) for p in PRECISIONS]
    assert all(c.ratio > 0 for c in calls)
    fixed, costs = calibrate(runtime, ids[:16], 2, call_costs(runtime, x[:1], PRECISIONS, 2, 64))
    steps = batch_steps(runtime, ids, fixed, costs, calls, rows=(2, 4))
    assert [s.rows for s in steps] == [2, 4]
    assert all(s.fixed_ratio > 0 and 0.2 <= s.expert_scale <= 5.0 for s in steps)


def test_the_profile_carries_batch_timings_the_planner_predicts_from(runtime) -> None:
    """A profile measures 4- and 16-row steps; the planner predicts per-stream and aggregate tokens/s
    at a concurrency from it (16 rows in one step cost far less than 16 one-row steps, even here)."""
    from moeqos.planner.latency_model import LatencyModel

    calibration = runtime.tokenizer.encode(" ".join(["the quick brown fox jumps over the lazy dog"] * 8))
    profile = runtime.profile(
        calibration, "tiny:train", max_tokens=64, repeats=1, window=32, precisions=PRECISIONS
    )
    assert [s.rows for s in profile.batch_steps] == [4, 16]
    assert {c.precision for c in profile.batch_calls} == set(PRECISIONS)
    assert Profile.from_json(profile.to_json()) == profile
    plan = Plan.uniform(LAYERS, EXPERTS, Precision.INT8, "cpu")
    model = LatencyModel.fit(profile)
    one, sixteen = model.at_concurrency(1), model.at_concurrency(16)
    assert one.predict_tokens_per_s(plan) == pytest.approx(model.predict_tokens_per_s(plan))
    assert sixteen.predict_aggregate_tokens_per_s(plan) > one.predict_aggregate_tokens_per_s(plan)
