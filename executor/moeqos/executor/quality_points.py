"""The profile's `quality` and `design` stages: the perplexity of the given (uniform) plans and of the
mixed plans designed from them (moeqos.executor.calibration_design), each precision's designs measured
right after its uniform plan.

Why that order: a plan view builds the experts it needs and hands them to the variant factory's memory
cache afterwards (moeqos.executor.plan_view). A precision's designed plans hold a part of its uniform
plan's experts, so measured right after it they take every quantized expert from that cache. Measured
after all the uniform plans (the order before), the later ones had flushed it (1 GiB, against 0.2-0.6 GB
per lossy precision of the default model's experts) and every design quantized its experts again.
The reference precision's uniform plan goes first (a precision's designs depend on its increase over
it), then the anchors' (the designs of the others borrow their signal). The points come back in the order the old stages gave them: the given plans' in their order, then the
designs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import QualityPoint
from moeqos.executor.calibration_design import uniform_increases
from moeqos.executor.evaluation import evaluate
from moeqos.executor.measurement import Measurable

Progress = Callable[[str, float], None]
Designer = Callable[[Mapping[Precision, float]], list[Plan]]
"""Designed plans for the precisions of a {precision: measured uniform increase} mapping."""


def measure_quality(
    runtime: Measurable,
    plans: Sequence[Plan],
    ids: list[int],
    corpus: str,
    window: int,
    progress: Progress,
    reference: Precision,
    designer: Designer | None = None,
    first: Collection[Precision] = (),
    before: Callable[[Precision], None] | None = None,
) -> list[QualityPoint]:
    """QualityPoints of `plans` (stage `quality`) and, with a `designer`, of the designs of each
    uniform plan's precision (stage `design`), on `ids` in windows of `window`, labelled `corpus`.

    The reference's uniform plan is measured first, then those of the precisions in `first` (whose
    measurements the designer of the others may need: the anchors), then the rest in order;
    `before(precision)` runs before each uniform plan is measured."""

    def rank(i: int) -> int:
        precision = uniform_precision(plans[i])
        return 0 if precision == reference else 1 if precision in first else 2

    order = sorted(range(len(plans)), key=rank)
    measured: dict[int, QualityPoint] = {}
    designs: list[QualityPoint] = []
    for i in order:
        precision = uniform_precision(plans[i])
        if before is not None and precision is not None:
            before(precision)
        measured[i] = point(runtime, plans[i], ids, corpus, window)
        progress("quality", len(measured) / len(plans))
        if designer is None or precision is None or precision == reference:
            continue
        done = [plans[j] for j in measured]
        increases = uniform_increases(done, [measured[j].perplexity for j in measured], reference)
        for plan in designer({precision: increases[precision]}):
            designs.append(point(runtime, plan, ids, corpus, window))
            progress("design", min(len(measured) / len(plans), 0.99))  # its share of the plans
    if designer is not None:
        progress("design", 1.0)
    return [measured[i] for i in range(len(plans))] + designs


def point(runtime: Measurable, plan: Plan, ids: list[int], corpus: str, window: int) -> QualityPoint:
    """The perplexity of `plan` on `ids` (windows of `window` tokens), labelled `corpus`."""
    result = evaluate(runtime, ids, plan, window, None, 0)
    return QualityPoint(plan.to_spec(), result.perplexity, corpus, result.tokens)


def uniform_precision(plan: Plan) -> Precision | None:
    """The one precision of every expert of `plan` (None when it mixes precisions or tiers)."""
    counts = plan.counts()
    return next(iter(counts)).precision if len(counts) == 1 else None
