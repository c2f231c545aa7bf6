"""Section `planner`: how long planning takes, and switching plans on a live executor vs reloading.

Solve time (median of repeats, cost models fitted once beforehand, as the planner service caches
them) for the default model's measured profile and for the planner benchmark's what-if instances
(Mixtral-8x7B and -8x22B on A100-like hardware, see moeqos.bench.planner_bench), and the frontier's time for
each; then the executor's plan switches (changed experts, seconds) beside a full
`ExecutorRuntime.load` into the target plan.
"""

from __future__ import annotations

import functools
import gc
import itertools
from typing import Any

from moeqos.bench.report import SectionResult, table
from moeqos.bench.timing import time_repeats, timed

QUALITY_STEPS = (0.02, 0.10)
"""Perplexity ceilings as fractions of the reference perplexity (targets for the solve timings)."""
MIN_SOLVE_REPEATS = 3


def instance_timings(name: str, profile: Any, budgets: Any, points: int, repeats: int) -> list[list[Any]]:
    """Rows (instance, task, median seconds, result) for solves at each quality step and a frontier."""
    from moeqos.core.qos import QosTarget
    from moeqos.planner.frontier import frontier
    from moeqos.planner.latency_model import LatencyModel
    from moeqos.planner.quality_model import QualityModel
    from moeqos.planner.solver import PlanRequest, solve

    (latency, quality), fit_seconds = timed(lambda: (LatencyModel.fit(profile), QualityModel.fit(profile)))
    rows: list[list[Any]] = [[name, "fit cost models", fit_seconds, f"{len(profile.call_costs)} call costs"]]
    repeats = max(repeats, MIN_SOLVE_REPEATS)
    for step in QUALITY_STEPS:
        request = PlanRequest(
            profile, QosTarget(max_perplexity_increase=step * quality.reference_perplexity), budgets
        )
        best = solve(request, latency, quality)
        timing = time_repeats(functools.partial(solve, request, latency, quality), repeats, warmup=0)
        rows.append(
            [name, f"solve ppl <= ref +{step:.0%}", timing.median, f"{best.predicted_tokens_per_s:.3g} tok/s"]
        )
    timing = time_repeats(
        lambda: frontier(profile, budgets, points, latency=latency, quality=quality), 1, warmup=0
    )
    rows.append([name, f"frontier ({points} points)", timing.median, ""])
    return rows


def switch_rows(ctx: Any) -> list[list[Any]]:
    """Switches between the reference plans and the knee, then a full reload into all-int4."""
    sequence = [
        ("all-bf16", ctx.full_precision),
        ("all-int4", ctx.uniform_int4),
        ("knee", ctx.knee.plan),
        ("all-bf16", ctx.full_precision),
    ]
    ctx.apply(sequence[0][1])
    rows = []
    for (before, _), (after, plan) in itertools.pairwise(sequence):
        switch = ctx.apply(plan)
        rows.append([f"switch {before} -> {after}", switch.report.experts_changed, switch.report.seconds])
    reload_seconds, runtime = ctx.time_load(ctx.uniform_int4)
    del runtime
    gc.collect()
    rows.append(
        [
            "full reload into all-int4 (ExecutorRuntime.load)",
            ctx.profile.model.num_layers * ctx.profile.model.num_experts,
            reload_seconds,
        ]
    )
    return rows


def run(ctx: Any) -> SectionResult:
    """Solve and frontier timings for the measured profile and the planner benchmark's what-if instances
    (Mixtral-8x7B and -8x22B and the default model on A100-like and CPU hardware, each also
    "measured-like"; see moeqos.bench.planner_bench), then plan switches vs reload."""
    from moeqos.bench.planner_bench import instances as whatif_instances

    s = ctx.settings
    instances = [(f"{ctx.model_dir.name} (measured)", ctx.profile, ctx.budgets)]
    instances += [(name, profile, profile.tiers) for name, profile in whatif_instances()]
    rows = [r for name, p, b in instances for r in instance_timings(name, p, b, s.frontier_points, s.repeats)]
    switches = switch_rows(ctx)
    result = SectionResult("planner")
    result.tables.append(
        table(
            "planner: solve and frontier time",
            ["instance", "task", "seconds", "result"],
            rows,
            [f"solve: median of {max(s.repeats, MIN_SOLVE_REPEATS)}; models fitted once"],
        )
    )
    result.tables.append(
        table(
            "planner: plan switch vs reload",
            ["operation", "experts changed", "seconds"],
            switches,
            [
                "switches reuse variants quantized earlier in the run when cached; "
                "the reload quantizes from the checkpoint"
            ],
        )
    )
    result.data = {
        "timings": [dict(zip(("instance", "task", "seconds", "result"), r, strict=True)) for r in rows],
        "switches": [dict(zip(("operation", "changed", "seconds"), r, strict=True)) for r in switches],
    }
    return result
