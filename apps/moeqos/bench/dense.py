"""Section `dense`: all-int4 experts with the dense part (attention projections, lm head) in bf16, int8
and int4 (moeqos.core.dense): decode tokens/s and ptb:test perplexity of each.

The plans are timed interleaved, one run of each per round after one warm-up run of each, so a machine
whose load drifts slows all three alike: the ratios to dense bf16 are the numbers to read.
"""

from __future__ import annotations

import statistics
from typing import Any

from moeqos.bench.metrics import ratio
from moeqos.bench.report import SectionResult, table
from moeqos.core.dense import DenseElement
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision

DENSE_PRECISIONS = (Precision.BF16, Precision.INT8, Precision.INT4)


def dense_plans(ctx: Any) -> list[tuple[str, Plan]]:
    """All-int4 experts with the dense part in each of DENSE_PRECISIONS (bf16: the model's own)."""
    base = ctx.uniform_int4
    return [
        (f"dense {p}", base if p == Precision.BF16 else base.with_dense(tuple((e, p) for e in DenseElement)))
        for p in DENSE_PRECISIONS
    ]


def interleaved_rates(ctx: Any, plans: list[tuple[str, Plan]]) -> dict[str, list[float]]:
    """Decode tokens/s of each plan, `repeats` rounds of one run each (after one warm-up per plan)."""
    from moeqos.executor.generation import time_decode

    runtime, s = ctx.runtime, ctx.settings
    rates: dict[str, list[float]] = {name: [] for name, _ in plans}
    for round_ in range(s.repeats + 1):
        for name, plan in plans:
            ctx.apply(plan)
            timing = time_decode(runtime.decode_step, ctx.prompt_ids, s.decode_tokens, 1, warmup=0)
            if round_:  # the first round warms every plan up
                rates[name].append(timing.tokens_per_s)
    return rates


def run(ctx: Any) -> SectionResult:
    """Measure speed and perplexity of the three dense precisions; report ratios to dense bf16."""
    plans = dense_plans(ctx)
    rates = interleaved_rates(ctx, plans)
    s = ctx.settings
    data: dict[str, Any] = {}
    rows: list[list[Any]] = []
    base = statistics.median(rates[plans[0][0]])
    for name, plan in plans:
        ctx.log(f"perplexity of {plan.to_spec()}")
        quality = ctx.runtime.evaluate(ctx.test_ids, plan, context_length=s.context_length, decode_tokens=0)
        speed = statistics.median(rates[name])
        status = {d.element.value: d.bytes for d in _status_under(ctx, plan)}
        rows.append([name, speed, ratio(speed, base), quality.perplexity, status["attn"] + status["head"]])
        data[name] = {
            "spec": plan.to_spec(),
            "tokens_per_s": speed,
            "samples": rates[name],
            "ratio": ratio(speed, base),
            "perplexity": quality.perplexity,
            "dense_bytes": status,
        }
    notes = [
        f"experts all int4; greedy, {s.decode_tokens} tokens, median of {s.repeats} interleaved rounds; "
        f"perplexity on {len(ctx.test_ids)} ptb:test tokens in windows of {s.context_length}",
        "dense bytes: attention + head as held (a tied head in bf16 is the embedding matrix: 0)",
    ]
    result = SectionResult("dense", data=data)
    result.tables.append(
        table(
            "dense part: precision of attention + lm head",
            ["plan", "tok/s", "x bf16", "ppl", "bytes"],
            rows,
            notes,
        )
    )
    return result


def _status_under(ctx: Any, plan: Plan) -> Any:
    ctx.apply(plan)
    return ctx.runtime.dense_status()
