"""The profile's quant_error, quality and design stages share their quantization
(moeqos.executor.variant_errors, moeqos.executor.quality_points), and the dense stage reuses the served
plan's quality point, on the tiny random Mixtral: the same numbers as measured apart, fewer
quantizations and forward passes. One profile serves every check (a profile is the slow part)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from moeqos.core.plan import Plan, parse_plan
from moeqos.core.precision import Precision, expert_bytes
from moeqos.executor import calibration_design, dense_profile, profiling
from moeqos.executor.profiling import route_calibration
from moeqos.executor.quant import QuantExpert

from tests.executor.tiny import EXPERTS, LAYERS, prompt_ids

IDS = prompt_ids(96, seed=5)[0].tolist()
PRECISIONS = (Precision.FP32, Precision.INT8, Precision.INT4)
HIDDEN, INTERMEDIATE = 64, 128
"""The tiny checkpoint's expert shape (conftest.tiny_dir)."""


def _no_progress(stage: str, fraction: float) -> None:
    pass


def _uniform(precision: Precision) -> Plan:
    return Plan.uniform(LAYERS, EXPERTS, precision, "cpu")


class QuantizationsAfterBatch:
    """Counts quantizations from the end of the `batch` stage to the start of the `dense` stage (the
    quant_error, quality and design stages): every QuantExpert.from_weights per precision, and the
    variant factory's per variant key."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, factory: Any) -> None:
        self.on = False
        self.counts: Counter[Precision] = Counter()
        self.variants: Counter[tuple[int, int, Precision, int]] = Counter()
        self.stages: list[str] = []
        original = QuantExpert.from_weights.__func__  # type: ignore[attr-defined]
        quantize = factory._quantize

        def counted(cls, w1, w2, w3, precision, *args, **kwargs):
            if self.on:
                self.counts[Precision.parse(precision)] += 1
            return original(cls, w1, w2, w3, precision, *args, **kwargs)

        def by_key(key, device):
            if self.on:
                self.variants[key] += 1
            return quantize(key, device)

        monkeypatch.setattr(QuantExpert, "from_weights", classmethod(counted))
        monkeypatch.setattr(factory, "_quantize", by_key)

    def progress(self, stage: str, fraction: float) -> None:
        self.stages.append(stage)
        if stage == "batch" and fraction >= 1.0:
            self.on = True
        if stage == "dense":
            self.on = False

    def by_factory(self, precision: Precision) -> int:
        return sum(n for key, n in self.variants.items() if key[2] == precision)


def _recorded_dense_evaluations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    evaluate = dense_profile.evaluate

    def recorded(rt, ids, plan, *args, **kwargs):
        seen.append(plan.to_spec())
        return evaluate(rt, ids, plan, *args, **kwargs)

    monkeypatch.setattr(dense_profile, "evaluate", recorded)
    return seen


def test_the_stages_quantize_each_variant_once_and_measure_what_they_measured_apart(
    make_runtime, monkeypatch
) -> None:
    # a memory cache that holds one lossy precision's experts, not two; the tiny model's int4 and
    # int8 are nearly lossless (no designs by default): designed anyway
    room = LAYERS * EXPERTS * expert_bytes(HIDDEN, INTERMEDIATE, Precision.INT8, 64)
    runtime = make_runtime(variant_cache_dir=None, memory_cache_bytes=room)
    monkeypatch.setattr(calibration_design, "NEARLY_LOSSLESS", -math.inf)
    counter = QuantizationsAfterBatch(monkeypatch, runtime.factory)
    dense_seen = _recorded_dense_evaluations(monkeypatch)
    direct_asked: list[tuple[Precision, ...]] = []
    measure_directly = profiling.quant_errors

    def recorded(runtime, captured, precisions, *args):
        direct_asked.append(tuple(precisions))
        return measure_directly(runtime, captured, precisions, *args)

    monkeypatch.setattr(profiling, "quant_errors", recorded)
    plans = [_uniform(p) for p in (Precision.INT4, Precision.INT8, Precision.FP32)]
    profile = runtime.profile(
        IDS,
        "tiny",
        max_tokens=len(IDS),
        repeats=1,
        capture_tokens=32,
        window=48,
        quality_plans=plans,
        precisions=PRECISIONS,
        progress=counter.progress,
        sensitivity_tokens=32,
    )
    specs = [q.plan_spec for q in profile.quality_points]
    # the given plans' points in their order, then the designs (int4's and int8's, measured after
    # their uniform plans)
    assert specs[:3] == [p.to_spec() for p in plans]
    assert len(specs) > 3 and all(len(_precisions(s)) == 2 for s in specs[3:])
    assert {"quant_error", "quality", "design", "dense"} <= set(counter.stages)
    assert len(profile.error_overlap) == LAYERS  # measured on int4's cached variants (no quantization)
    # the lossy errors are measured on the factory's variants, not quantized once more on the side
    assert direct_asked == [(Precision.FP32,)]
    assert counter.counts[Precision.INT8] == counter.by_factory(Precision.INT8) > 0
    # each lossy variant is quantized at most once for its errors, its uniform plan and its designs;
    # int4's not at all (the sensitivity stage built them): measured after every uniform plan, as
    # before, its designs quantized their experts again (int8's flushed them from the cache)
    assert counter.variants and max(counter.variants.values()) == 1
    assert counter.counts[Precision.INT4] == 0
    # the dense stage measured every lossy element but not its base, the served plan, again
    served = runtime.plan.to_spec()
    assert dense_seen and served not in dense_seen and served in specs

    monkeypatch.undo()
    _, captured = route_calibration(runtime, IDS, 48, 32, _no_progress)
    direct = profiling.quant_errors(runtime, captured, PRECISIONS, runtime.plan.group_size, _no_progress)
    for p in PRECISIONS:
        for row, expected in zip(profile.quant_error[p], direct[p], strict=True):
            assert row == pytest.approx(expected, rel=1e-5, abs=1e-7)
    base = dense_profile.evaluate(runtime, IDS, runtime.plan, 48, None, 0).perplexity
    assert profile.quality_points[2].perplexity == pytest.approx(base, rel=1e-9)


def _precisions(spec: str) -> set[Precision]:
    return {a.precision for a in parse_plan(spec, LAYERS, EXPERTS, "cpu").counts()}


def test_a_lossy_dense_element_is_priced_by_what_it_adds_to_whole_decode_steps(runtime, monkeypatch) -> None:
    """The dense precision's seconds are the cold pass over the element's matrices; another
    precision's are those plus what turning it in adds to a decode step (pairs of steps against the
    served plan, with that element alone in that precision), so the planner's difference is the
    measured one, never below zero; the element is built once for its steps and its perplexity; the
    served plan is back afterwards."""
    from moeqos.core.dense import DenseElement
    from moeqos.executor.step_timing import StepPair

    served = runtime.plan
    monkeypatch.setattr(dense_profile, "_element_seconds", lambda *args: 0.010)
    turned: list[Plan] = []
    alternating = runtime.alternating

    def recording(plan):
        turned.append(plan)
        return alternating(plan)

    monkeypatch.setattr(runtime, "alternating", recording)
    added = iter([-0.002, 0.001])
    monkeypatch.setattr(dense_profile, "paired_steps", lambda *args: [StepPair(0.010, next(added), 0.0)])
    lossy_builds: list[object] = []
    build = runtime.dense.build
    monkeypatch.setattr(
        runtime.dense,
        "build",
        lambda plan, elements: lossy_builds.append(plan.dense) or build(plan, elements),
    )
    costs = dense_profile.dense_costs(runtime, [Precision.INT8], IDS, 48, 1, _no_progress, base=1.0)
    assert [dense for dense in lossy_builds if dense] == [  # each once, for its steps and its perplexity
        ((DenseElement.ATTN, Precision.INT8),),
        ((DenseElement.HEAD, Precision.INT8),),
    ]
    seconds = {(c.element, c.precision): c.seconds for c in costs}
    dense = runtime.dense.dense
    assert seconds == pytest.approx(
        {
            (DenseElement.ATTN, dense): 0.010,
            (DenseElement.ATTN, Precision.INT8): 0.008,
            (DenseElement.HEAD, dense): 0.010,
            (DenseElement.HEAD, Precision.INT8): 0.011,
        }
    )
    assert [plan.dense for plan in turned] == [
        ((DenseElement.ATTN, Precision.INT8),),
        ((DenseElement.HEAD, Precision.INT8),),
    ]
    added = iter([-0.030, 0.001])  # attention: a saving larger than its own pass, the pairs' noise
    noisy = dense_profile.dense_costs(runtime, [Precision.INT8], IDS, 48, 1, _no_progress, base=1.0)
    assert [c.seconds for c in noisy if c.element is DenseElement.ATTN] == pytest.approx([0.010, 0.0])
    assert runtime.plan == served
