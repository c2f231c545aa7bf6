"""The `quality` section's refit on the held-out plans' tokens (moeqos.bench.quality.on_eval_tokens),
against a stand-in runtime that scores a plan by its int4 count (no model)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from moeqos.bench.quality import on_eval_tokens
from moeqos.core.plan import Plan, parse_plan
from moeqos.core.precision import Precision
from moeqos.core.profile import QualityPoint
from moeqos.core.service_types import Evaluation

from tests.planner.planner_fixtures import synthetic_profile


class _Runtime:
    """evaluate(ids, plan, ...) -> perplexity 10 + number of int4 experts (+ 1 on token ids from 32 on),
    `len(ids) - 1` tokens."""

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, ids, plan, context_length, decode_tokens):
        self.calls += 1
        int4 = sum(c for a, c in plan.counts().items() if a.precision == Precision.INT4)
        later = 1.0 if ids[0] >= 32 else 0.0
        return Evaluation(10.0 + int4 + later, 0.0, len(ids) - 1, plan.to_spec(), "ptb:test", 0.1, 0)


def _context(runtime: _Runtime) -> SimpleNamespace:
    """The bench context `on_eval_tokens` reads: a 2 x 3 model, 65 eval tokens in windows of 32."""
    return SimpleNamespace(
        shape=(2, 3),
        device="cpu",
        full_precision=Plan.uniform(2, 3, Precision.BF16, "cpu"),
        perplexities={},
        halves={},
        test_ids=list(range(65)),
        runtime=runtime,
        settings=SimpleNamespace(context_length=32),
        log=lambda message: None,
    )


def test_fitting_plans_are_measured_again_on_the_eval_tokens_once_each():
    profile = synthetic_profile(2, 3, (Precision.BF16, Precision.INT4), ("cpu",), quality_plans=0)
    plans = [Plan.uniform(2, 3, p, "cpu") for p in (Precision.BF16, Precision.INT4)]
    profile = profile.__class__.from_dict(
        profile.to_dict()
        | {"quality_points": [QualityPoint(p.to_spec(), 99.0, "ptb:valid", 511).__dict__ for p in plans]}
    )
    runtime = _Runtime()
    ctx = _context(runtime)
    refit = on_eval_tokens(ctx, profile)
    # measured by halves split on the 32-token window boundary (31 + 32 tokens), the whole perplexity
    # the token-weighted geometric mean of the halves', each half's log perplexity kept
    whole = [math.exp((31 * math.log(low) + 32 * math.log(low + 1)) / 63) for low in (10.0, 16.0)]
    assert [(q.perplexity, q.corpus, q.tokens) for q in refit.quality_points] == [
        (pytest.approx(whole[0]), "ptb:test", 63),
        (pytest.approx(whole[1]), "ptb:test", 63),
    ]
    assert ctx.halves[plans[1].to_spec()] == pytest.approx((math.log(16.0), math.log(17.0)))
    assert refit.frequency == profile.frequency and refit.layer_kl == profile.layer_kl
    on_eval_tokens(ctx, profile)
    assert runtime.calls == 4  # measured plans are cached in the context, not measured again


def test_stage_clock_times_each_stage_and_logs_the_finished_ones(monkeypatch):
    import moeqos.bench.quality as quality

    clock = iter([0.0, 1.0, 3.0, 3.5, 6.0])
    monkeypatch.setattr(quality.time, "perf_counter", lambda: next(clock))
    lines: list[str] = []
    stages = quality.StageClock(lines.append)
    for stage, fraction in (
        ("frequency", 0.5),
        ("frequency", 1.0),
        ("sensitivity", 0.1),
        ("sensitivity", 1.0),
    ):
        stages.progress(stage, fraction)
    assert stages.seconds == {"frequency": 3.0, "sensitivity": 3.0}
    assert lines == ["profile: frequency done (3.0 s)", "profile: sensitivity done (3.0 s)"]


def test_the_measurement_agreement_compares_each_plans_increase_on_the_two_halves():
    from moeqos.bench.quality import measurement_agreement

    reference = Plan.uniform(1, 4, Precision.BF16, "cpu")
    plans = [parse_plan(f"bf16@cpu,L0.E{e}=int4@cpu", 1, 4, "cpu") for e in range(3)]
    halves = {reference.to_spec(): (0.0, 0.0)}
    rises = ((0.1, 0.1), (0.2, 0.3), (0.3, 0.2))  # log increase on each half
    for plan, rise in zip(plans, rises, strict=True):
        halves[plan.to_spec()] = rise
    whole = {
        p.to_spec(): SimpleNamespace(perplexity=math.exp(sum(halves[p.to_spec()]) / 2))
        for p in [reference, *plans]
    }
    ctx = SimpleNamespace(halves=halves, perplexities=whole)
    mape, rank = measurement_agreement(ctx, plans, reference)
    expected = [abs(math.expm1(a) - math.expm1(b)) / math.expm1((a + b) / 2) for a, b in rises]
    assert mape == pytest.approx(sum(expected) / 3)
    assert rank == pytest.approx(0.5)  # ranks (0, 1, 2) against (0, 2, 1)
    del halves[plans[0].to_spec()]
    assert measurement_agreement(ctx, plans, reference) is None  # a plan measured whole: no estimate


def _measured_alone_profile():
    """A 2 x 3 profile with int4's layer KL and the layers and layer 1's experts measured alone."""
    profile = synthetic_profile(2, 3, (Precision.BF16, Precision.INT4), ("cpu",), quality_plans=0)
    return profile.__class__.from_dict(
        profile.to_dict()
        | {
            "layer_kl": {"int4": [0.01, 0.2]},
            "layer_alone": [0.5, 0.5],  # as measured on the profile's own quality corpus
            "layer_alone_error": [0.1, 0.1],
            "expert_alone": {"1": [0.5, 0.5, 0.5]},
            "alone_tokens": 510,
        }
    )


def _recorded_alone(monkeypatch) -> list:
    """Stand in for the alone stage: each call's (ids, window, reference, kl) is appended to the list
    returned, and the same measurement answered."""
    import moeqos.executor.profiling as profiling
    from moeqos.executor.sensitivity import Alone

    asked = []

    def measure_alone(runtime, ids, window, reference, kl, progress):
        asked.append((ids, window, reference, dict(kl)))
        return Alone((0.001, 0.02), (0.0005, 0.004), {1: (0.0, 0.01, 0.002)}, 63)

    monkeypatch.setattr(profiling, "measure_alone", measure_alone)
    return asked


def test_the_layers_and_experts_alone_are_measured_again_on_the_eval_tokens(monkeypatch):
    profile = _measured_alone_profile()
    asked = _recorded_alone(monkeypatch)
    ctx = _context(_Runtime())
    refit = on_eval_tokens(ctx, profile)
    assert asked == [(list(range(65)), 32, Precision.BF16, {Precision.INT4: (0.01, 0.2)})]
    assert refit.layer_alone == (0.001, 0.02) and refit.expert_alone == {1: (0.0, 0.01, 0.002)}
    assert refit.layer_alone_error == (0.0005, 0.004)
    assert refit.alone_tokens == 63 and refit.layer_kl == profile.layer_kl


def test_the_alone_stage_measures_against_the_benchs_own_full_precision(monkeypatch):
    """The reference of the increases alone is the precision of the bench's full-precision plan (fp32
    where the bench runs one), not a fixed bf16."""
    asked = _recorded_alone(monkeypatch)
    ctx = _context(_Runtime())
    ctx.full_precision = Plan.uniform(2, 3, Precision.FP32, "cpu")
    on_eval_tokens(ctx, _measured_alone_profile())
    assert [reference for _, _, reference, _ in asked] == [Precision.FP32]
