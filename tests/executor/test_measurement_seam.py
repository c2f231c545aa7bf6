"""The measurement modules need no more of a runtime than moeqos.executor.measurement.Measurable: driven
through a small fake (tests/executor/fake_runtime.py), they route, time and score through its
`exclusive()` and `serving()` alone."""

from __future__ import annotations

import math

import pytest
import torch
from moeqos.core.plan import Plan
from moeqos.executor.costs import calibrate
from moeqos.executor.evaluation import evaluate
from moeqos.executor.measurement import Measurable
from moeqos.executor.profiling import route_calibration

from tests.executor.fake_runtime import FakeRuntime


def _quiet(stage: str, fraction: float) -> None:
    """Progress nobody watches."""


def test_the_runtime_and_the_fake_both_are_measurable(runtime) -> None:
    measurable: list[Measurable] = [runtime, FakeRuntime()]  # mypy checks both against the Protocol
    assert all(callable(m.exclusive) and callable(m.serving) for m in measurable)


def test_route_calibration_counts_routes_inside_exclusive_only() -> None:
    fake = FakeRuntime(num_layers=2, num_experts=4)
    # tokens 0, 0, 0, 1 route to experts {0, 1} x3 and {1, 2}: calls per token 3/4, 4/4, 1/4, 0
    frequency, captured = route_calibration(fake, [0, 0, 0, 1], window=3, capture_tokens=2, progress=_quiet)
    assert frequency == ((0.75, 1.0, 0.25, 0.0),) * 2
    assert [c.shape for c in captured] == [torch.Size([2, 8])] * 2  # [capture_tokens, H]
    assert len(fake.steps) == 2 and all(step["exclusive"] for step in fake.steps)
    assert all(block.observer is None for block in fake.blocks)


def test_calibrate_switches_the_experts_off_only_inside_exclusive() -> None:
    fake = FakeRuntime()
    fixed, costs = calibrate(fake, [3, 4, 5], repeats=1, costs=[])
    assert fixed >= 0.0 and costs == []  # the served plan has no measured costs: returned as given
    assert any(not step["experts"] for step in fake.steps)
    assert all(step["exclusive"] for step in fake.steps if not step["experts"])
    assert all(block.experts_enabled for block in fake.blocks)


def test_evaluate_views_the_plan_without_switching_and_scores_every_target() -> None:
    fake = FakeRuntime(vocab=16)
    served, asked = fake.plan, Plan.uniform(2, 4, "int4", "cpu")
    result = evaluate(fake, list(range(10)), asked, 4, None, 0)
    assert result.perplexity == pytest.approx(16.0)  # uniform logits over 16 tokens
    assert result.tokens == 10 - math.ceil(10 / 4)  # non-overlapping windows: no first tokens
    assert result.plan_spec == asked.to_spec()
    assert all(step["plan"] == asked for step in fake.steps)  # every step computed with the plan asked
    assert fake.switches == [] and fake.plan == served  # the plan served never changed


def test_evaluate_times_the_decode_through_fresh_decode_steps() -> None:
    fake = FakeRuntime(vocab=32)
    result = evaluate(fake, list(range(20)), None, 4, None, 5)
    assert result.decode_tokens == 5 and result.tokens_per_s > 0
    assert fake.decode_steps == 2  # one untimed warm-up run and one timed run, each with a fresh KV cache
    assert len(fake.steps) == 5 + 2 * 5  # five scoring windows, then two runs of exactly five tokens
