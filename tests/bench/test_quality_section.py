"""The `quality` section's refit on the held-out plans' tokens (moeqos.bench.quality.on_eval_tokens),
against a stand-in runtime that scores a plan by its int4 count (no model)."""

from __future__ import annotations

from types import SimpleNamespace

from moeqos.bench.quality import on_eval_tokens
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import QualityPoint

from tests.planner.planner_fixtures import synthetic_profile


class _Runtime:
    """evaluate(ids, plan, ...) -> perplexity 10 + number of int4 experts, `len(ids) - 1` tokens."""

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, ids, plan, context_length, decode_tokens):
        self.calls += 1
        int4 = sum(c for a, c in plan.counts().items() if a.precision == Precision.INT4)
        return SimpleNamespace(perplexity=10.0 + int4, tokens=len(ids) - 1)


def test_fitting_plans_are_measured_again_on_the_eval_tokens_once_each():
    profile = synthetic_profile(2, 3, (Precision.BF16, Precision.INT4), ("cpu",), quality_plans=0)
    plans = [Plan.uniform(2, 3, p, "cpu") for p in (Precision.BF16, Precision.INT4)]
    profile = profile.__class__.from_dict(
        profile.to_dict()
        | {"quality_points": [QualityPoint(p.to_spec(), 99.0, "ptb:valid", 511).__dict__ for p in plans]}
    )
    runtime = _Runtime()
    ctx = SimpleNamespace(
        shape=(2, 3),
        device="cpu",
        perplexities={},
        test_ids=list(range(65)),
        runtime=runtime,
        settings=SimpleNamespace(context_length=32),
        log=lambda message: None,
    )
    refit = on_eval_tokens(ctx, profile)
    assert [(q.perplexity, q.corpus, q.tokens) for q in refit.quality_points] == [
        (10.0, "ptb:test", 64),
        (16.0, "ptb:test", 64),
    ]
    assert refit.frequency == profile.frequency and refit.layer_kl == profile.layer_kl
    on_eval_tokens(ctx, profile)
    assert runtime.calls == 2  # measured plans are cached in the context, not measured again


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
