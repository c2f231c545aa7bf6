"""Held-out plans split into parts (moeqos.bench.quality_parts) and the `quality` section's measurement
of them (moeqos.bench.quality._parts) against a stand-in runtime that scores a plan by its int4 count."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from moeqos.bench.quality import _parts
from moeqos.bench.quality_parts import REST, parts_check, plan_parts
from moeqos.core.plan import Plan, parse_plan
from moeqos.core.precision import Precision

from tests.bench.test_quality_section import _context, _Runtime


def _int4(plan: Plan) -> set[tuple[int, int]]:
    return {key for key, a in plan.items() if a.precision == Precision.INT4}


def test_a_plan_is_split_into_its_loud_layers_and_the_rest():
    reference = Plan.uniform(4, 3, Precision.BF16, "cpu", group_size=32)
    plan = parse_plan("bf16@cpu,L0.E1=int4@cpu,L1.E0-1=int4@cpu,L3.E2=int4@disk", 4, 3, "cpu", 32)
    parts = plan_parts(plan, reference, loud=[1, 2])
    assert list(parts) == ["layer 1", REST]  # layer 2 is loud but holds no lossy expert
    assert _int4(parts["layer 1"]) == {(1, 0), (1, 1)}
    assert _int4(parts[REST]) == {(0, 1), (3, 2)}
    assert parts[REST][3, 2].tier == "disk" and parts[REST][3, 1].tier == "cpu"
    assert all(part.group_size == 32 for part in parts.values())
    assert plan_parts(reference, reference, loud=[1]) == {}


def test_the_check_ranks_the_sum_of_the_parts_and_keeps_each_plans_interaction():
    whole = [0.10, 0.20, 0.30]
    parts = [{"layer 1": 0.04, REST: 0.06}, {"layer 1": 0.25}, {"layer 1": 0.1, REST: 0.1}]
    check = parts_check(whole, parts, predicted=[3.0, 1.0, 2.0])
    assert check.plans == 3
    assert check.additive_rank == pytest.approx(0.5)  # sums (0.1, 0.25, 0.2): ranks (0, 2, 1)
    assert check.model_rank == pytest.approx(-0.5)  # ranks (2, 0, 1)
    assert check.interactions == pytest.approx((0.0, -0.05, 0.1))


def test_the_section_measures_each_part_alone_on_the_eval_tokens():
    runtime = _Runtime()
    ctx = _context(runtime)
    profile = SimpleNamespace(expert_alone={1: (0.1, 0.2, 0.3)})
    plan = parse_plan("bf16@cpu,L0.E0-1=int4@cpu,L1.E2=int4@cpu", 2, 3, "cpu")
    # the stand-in scores 10 + int4 experts on the first 32-token window, one more on the second
    logs = {k: (31 * math.log(10.0 + k) + 32 * math.log(11.0 + k)) / 63 for k in range(4)}
    reference, whole = math.exp(logs[0]), math.exp(logs[3])
    quality = SimpleNamespace(predict_log_increase=lambda p: float(len(_int4(p))))
    check, records = _parts(ctx, [(plan, whole)], quality, profile, reference)
    assert records == [
        {
            "plan_spec": plan.to_spec(),
            "whole": pytest.approx(logs[3] - logs[0]),
            "parts": {"layer 1": pytest.approx(logs[1] - logs[0]), REST: pytest.approx(logs[2] - logs[0])},
        }
    ]
    assert check.interactions == pytest.approx((logs[3] + logs[0] - logs[1] - logs[2],))
    assert runtime.calls == 4  # each part by halves; the whole plan was measured before
