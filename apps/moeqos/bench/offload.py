"""Section `offload`: the dial when host RAM cannot hold every expert (the paper's own setting).

The paper's dial spans 0.63-13 tokens/s because Mixtral 8x7B does not fit its A100: from full
precision with experts offloaded to quantized experts that fit. Here the `cpu` tier gets RAM_SHARE of
the all-bf16 experts' bytes, so plans keep part of their experts on `disk`, read into the executor's
LRU slot pool on use. The executor reads with `disk_reads=uncached` (see moeqos.bench.context), so a miss
reads the file as it would on a host whose RAM truly cannot hold the experts, not from an OS page
cache the budget does not count.

Same profile and cost models as the `frontier` section (its load costs were measured on this
executor). Measured, each predicted first: the full-precision plan under the budget (every expert
bf16, placed by the planner for speed: the dial's slow end, where the paper's 0.63 tokens/s is), and
plans spread along the planner's frontier under the budget. For each: decode tokens/s and the disk
pool's hit rate on the executor, and ptb:test perplexity (a plan's numbers do not depend on where its
experts live, so perplexity is measured with every expert in RAM: the same bytes, without the disk).
Goals: the dial's range (full precision to the fastest plan) and both cost models' errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from moeqos.bench import plots
from moeqos.bench.frontier import PERPLEXITY_ERROR_GOAL, SPEED_ERROR_GOAL
from moeqos.bench.metrics import mape, percent_error, pool_hit_rate, ratio, short_description, spread_indices
from moeqos.bench.report import Goal, SectionResult, table
from moeqos.core.plan import Assignment, Plan
from moeqos.core.tier import DISK, TierBudget
from moeqos.core.units import format_bytes

RANGE_GOAL = 4.0
"""Fastest measured plan / the full-precision plan (with every expert in RAM the range is bounded by how
much lighter the lightest expert precision makes a whole token, so the goal is judged here)."""
RAM_SHARE = 0.25
"""The `cpu` tier's budget as a share of every expert in bf16: less than all-int4 needs (28%), so every
plan offloads some experts, as Mixtral 8x22B does even in 4 bits on one 80 GB accelerator. With half
(measured), all-int8 nearly fits, int8 is as accurate as bf16 on this model, and the planner rightly
never offloads: the dial is then the int8/int4 mix of the `frontier` section."""


@dataclass(frozen=True)
class OffloadPoint:
    """One measured plan of the offload frontier."""

    spec: str
    description: str
    role: str
    """`full precision` (every expert bf16, the dial's slow end) or `frontier`."""
    experts_on_disk: int
    predicted_tokens_per_s: float
    measured_tokens_per_s: float
    predicted_hit_rate: float | None
    measured_hit_rate: float | None
    predicted_perplexity: float
    measured_perplexity: float
    fitting: bool
    """Its in-RAM equivalent is one of the quality model's fitting plans (left out of the perplexity
    error, which is over held-out plans)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ram_budget(ctx: Any) -> TierBudget:
    """RAM_SHARE of every expert in bf16, on the device tier."""
    from moeqos.core.precision import Precision

    layers, experts = ctx.shape
    return TierBudget(
        ctx.device, int(RAM_SHARE * layers * experts * ctx.profile.expert_bytes()[Precision.BF16])
    )


def in_ram(plan: Plan, tier: str) -> Plan:
    """`plan` with its disk experts moved to `tier`: the same numbers, for perplexity."""
    rows = tuple(
        tuple(Assignment(a.precision, tier) if a.tier == DISK else a for a in row) for row in plan.assignments
    )
    return Plan(rows, plan.group_size)


def predicted_hit_rate(latency: Any, plan: Plan) -> float | None:
    """Frequency-weighted pool hit rate the latency model expects for `plan` (None without disk experts)."""
    frequency = np.asarray(latency.frequency)  # [L, E]
    on_disk = np.array([[a.tier == DISK for a in row] for row in plan.assignments])  # [L, E]
    calls = float(frequency[on_disk].sum())
    return float((latency.hit_rates(plan) * frequency)[on_disk].sum() / calls) if calls else None


def measure(ctx: Any, result: Any, role: str) -> OffloadPoint:
    """Decode speed (with the pool's hit rate over those runs) and perplexity of one planned plan."""
    plan = result.plan
    before = ctx.runtime.store_stats()
    speed = ctx.decode_speed(plan)
    after = ctx.runtime.store_stats()
    same_bytes_in_ram = in_ram(plan, ctx.device)
    return OffloadPoint(
        plan.to_spec(),
        short_description(plan),
        role,
        sum(1 for _, a in plan.items() if a.tier == DISK),
        result.predicted_tokens_per_s,
        speed.tokens_per_s,
        predicted_hit_rate(ctx.models[0], plan),
        pool_hit_rate(before, after),
        result.predicted_perplexity,
        float(ctx.perplexity(same_bytes_in_ram).perplexity),
        same_bytes_in_ram.to_spec() in ctx.fitting_labels,
    )


def run(ctx: Any) -> SectionResult:
    """Plan full precision and the frontier under the RAM budget, measure them, report range and errors."""
    from moeqos.bench.context import FITTING_PRECISIONS
    from moeqos.core.precision import Precision
    from moeqos.core.qos import Objective, QosTarget
    from moeqos.planner.solver import PlanRequest, solve

    # experts only: on a small model a quantized dense part frees enough RAM to hold every expert, and
    # this section is about the experts that do not fit
    profile, latency, quality = ctx.experts_only
    budget = ram_budget(ctx)
    budgets = (budget, *(b for b in ctx.profile.tiers if b.name == DISK))  # the executor's own disk
    full = solve(
        PlanRequest(
            profile,
            QosTarget(objective=Objective.SPEED),
            budgets,
            allowed_precisions=frozenset({Precision.BF16}),
        ),
        latency,
        quality,
    )
    # at least 4 bits: with int3/int2 a quarter of the bf16 bytes holds every expert (all-int3 is 21% of
    # them), and this section is about the experts that do not fit (RAM_SHARE); `frontier` shows those
    offloadable = [p for p in FITTING_PRECISIONS if not p.is_bit_packed]
    points = ctx.frontier_under(budgets, offloadable, experts_only=True)
    chosen = [
        points[i]
        for i in spread_indices([r.predicted_tokens_per_s for r in points], ctx.settings.measured_plans)
    ]
    measured = [measure(ctx, full, "full precision"), *(measure(ctx, r, "frontier") for r in chosen)]
    result = SectionResult("offload")
    result.tables.append(_plan_table(ctx, measured, budget, len(points)))
    result.goals += _goals(measured, ctx.settings.measured_plans)
    result.data = {
        "cpu_budget_bytes": budget.budget_bytes,
        "ram_share": RAM_SHARE,
        "disk_reads": ctx.runtime.config.disk_reads,
        "disk_pool_slots": ctx.runtime.config.disk_pool_slots,
        "load_costs": [
            {"precision": c.precision.value, "bytes": c.bytes, "seconds": c.seconds}
            for c in ctx.profile.load_costs
        ],
        "frontier": [r.to_dict() for r in points],
        "measured": [p.to_dict() for p in measured],
    }
    over = ([p.measured_tokens_per_s for p in measured], [p.measured_perplexity for p in measured])
    line = ([r.predicted_tokens_per_s for r in points], [r.predicted_perplexity for r in points])
    title = f"{ctx.model_dir.name}: RAM for {RAM_SHARE:.0%} of the bf16 experts"
    result.plots.append(str(plots.frontier(ctx.out_dir / "offload_frontier.png", line, over, title)))
    return result


def _plan_table(ctx: Any, measured: list[OffloadPoint], budget: TierBudget, frontier_size: int) -> Any:
    rows = [
        [
            p.description + (" (fitting)" if p.fitting else ""),
            p.role,
            p.experts_on_disk,
            p.predicted_tokens_per_s,
            p.measured_tokens_per_s,
            percent_error(p.predicted_tokens_per_s, p.measured_tokens_per_s),
            p.predicted_hit_rate,
            p.measured_hit_rate,
            p.predicted_perplexity,
            p.measured_perplexity,
            percent_error(p.predicted_perplexity, p.measured_perplexity),
        ]
        for p in measured
    ]
    loads = ", ".join(f"{c.precision.value} {c.seconds * 1e3:.2f} ms" for c in ctx.profile.load_costs)
    s, config = ctx.settings, ctx.runtime.config
    notes = [
        f"cpu budget {format_bytes(budget.budget_bytes)} ({RAM_SHARE:.0%} of all experts in bf16), the rest "
        f"on disk: LRU pool of {config.disk_pool_slots} slots, disk_reads={config.disk_reads}",
        f"full precision: every expert bf16, placed for speed; then {len(measured) - 1} of the "
        f"{frontier_size}-point frontier, spread in log tok/s; profiled disk loads: {loads}",
        f"tok/s: median of {s.repeats} greedy runs of {s.decode_tokens} tokens; hit rate over those runs and "
        f"the warm-up; perplexity: {len(ctx.test_ids)} ptb:test tokens with every expert in RAM",
    ]
    columns = [
        "plan",
        "role",
        "on disk",
        "pred tok/s",
        "meas tok/s",
        "err %",
        "pred hit",
        "meas hit",
        "pred ppl",
        "meas ppl",
        "err %",
    ]
    return table("offload: the dial under a RAM budget, predicted vs measured", columns, rows, notes)


def _goals(measured: list[OffloadPoint], wanted: int) -> list[Goal]:
    """The range from full precision (`measured[0]`) to the fastest plan; both errors over the plans
    (perplexity only over plans whose in-RAM equivalent was not a fitting plan)."""
    frontier = [p for p in measured if p.role == "frontier"]
    goals = [Goal("frontier plans measured", f">= {wanted}", len(frontier), len(frontier) >= wanted)]
    speeds = [p.measured_tokens_per_s for p in measured]
    span = ratio(max(speeds), measured[0].measured_tokens_per_s)
    speed_error = mape([p.predicted_tokens_per_s for p in measured], speeds)
    goals += [
        Goal("throughput range (fastest / full precision)", f">= {RANGE_GOAL:g}x", span, span >= RANGE_GOAL),
        Goal("throughput MAPE %", f"< {SPEED_ERROR_GOAL:g}", speed_error, speed_error < SPEED_ERROR_GOAL),
    ]
    held_out = [p for p in measured if not p.fitting]
    if held_out:
        ppl_error = mape(
            [p.predicted_perplexity for p in held_out], [p.measured_perplexity for p in held_out]
        )
        target = f"< {PERPLEXITY_ERROR_GOAL:g}"
        goals.append(
            Goal("perplexity MAPE % (held-out plans)", target, ppl_error, ppl_error < PERPLEXITY_ERROR_GOAL)
        )
    return goals
