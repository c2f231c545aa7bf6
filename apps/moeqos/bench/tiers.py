"""Section `tiers`: decoding when the host-RAM budget cannot hold every expert, so some sit on `disk`.

Every expert is int4; the `cpu` tier's budget shrinks from 100% to 25% of the all-int4 size and the
rest goes to disk by a rule: the most frequently routed experts stay resident (calls per token from
the profile), the others are read into the executor's LRU slot pool on use (uncached reads, see
moeqos.bench.context.DISK_READS). Reported per budget:
decode tokens/s, the latency model's prediction, and the pool's hit rate (ExecutorRuntime.store_stats
counters over the measurement's runs, warm-up included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moeqos.bench.metrics import pool_hit_rate
from moeqos.bench.report import SectionResult, table
from moeqos.core.plan import Assignment, Plan
from moeqos.core.precision import Precision
from moeqos.core.tier import DISK

FRACTIONS = (1.0, 0.75, 0.5, 0.25)
PRECISION = Precision.INT4


def resident_first_plan(
    frequency: Sequence[Sequence[float]],
    precision: Precision,
    expert_bytes: int,
    budget_bytes: int,
    tier: str,
) -> Plan:
    """Every expert in `precision`; the most frequently called ones in `tier` while they fit
    `budget_bytes`, the rest on disk. `frequency`: [L, E] calls per token."""
    keys = sorted(
        ((layer, expert) for layer, row in enumerate(frequency) for expert in range(len(row))),
        key=lambda k: -frequency[k[0]][k[1]],
    )
    resident = set(keys[: budget_bytes // expert_bytes])
    rows = tuple(
        tuple(Assignment(precision, tier if (layer, e) in resident else DISK) for e in range(len(row)))
        for layer, row in enumerate(frequency)
    )
    return Plan(rows)


def measure_budget(ctx: Any, fraction: float) -> dict[str, Any]:
    """Plan, run and predict one budget (a fraction of the all-int4 size)."""
    profile, latency = ctx.profile, ctx.models[0]
    size = profile.expert_bytes()[PRECISION]
    total = size * profile.model.num_layers * profile.model.num_experts
    plan = resident_first_plan(profile.frequency, PRECISION, size, int(total * fraction), ctx.device)
    before = ctx.runtime.store_stats()
    speed = ctx.decode_speed(plan)
    after = ctx.runtime.store_stats()
    on_disk = sum(1 for _, a in plan.items() if a.tier == DISK)
    try:
        predicted: float | None = latency.predict_tokens_per_s(plan)
    except KeyError:  # the profile measured no disk loads: the model cannot price disk experts
        predicted = None
    return {
        "fraction": fraction,
        "cpu_budget_bytes": int(total * fraction),
        "experts_on_disk": on_disk,
        "spec": plan.to_spec(),
        "tokens_per_s": speed.tokens_per_s,
        "predicted_tokens_per_s": predicted,
        "hit_rate": pool_hit_rate(before, after),
        "misses": after.misses - before.misses,
        "bytes_moved": after.bytes_moved - before.bytes_moved,
    }


def run(ctx: Any) -> SectionResult:
    """Measure each budget in FRACTIONS."""
    measured = [measure_budget(ctx, f) for f in FRACTIONS]
    rows = [
        [
            f"{m['fraction']:.0%}",
            m["cpu_budget_bytes"] / 2**20,
            m["experts_on_disk"],
            m["tokens_per_s"],
            m["predicted_tokens_per_s"],
            m["hit_rate"],
            m["bytes_moved"] / 2**20,
        ]
        for m in measured
    ]
    notes = [
        f"all experts {PRECISION.value}; resident = most frequently routed first; disk pool "
        f"{ctx.runtime.config.disk_pool_slots} slots (LRU), disk_reads={ctx.runtime.config.disk_reads}; hit rate over {ctx.settings.repeats + 1} runs "
        f"of {ctx.settings.decode_tokens} tokens"
    ]
    columns = ["cpu budget", "cpu MiB", "on disk", "tok/s", "pred tok/s", "pool hit rate", "MiB read"]
    result = SectionResult("tiers", data={"budgets": measured})
    result.tables.append(table("tiers: shrinking the host-RAM budget (rest on disk)", columns, rows, notes))
    if len(measured) > 1:
        from moeqos.bench import plots

        x = [100 * m["fraction"] for m in measured]
        path = plots.series(
            ctx.out_dir / "tiers.png",
            x,
            {"measured": [m["tokens_per_s"] for m in measured]},
            ("cpu budget, % of all-int4 size", "decode tokens/s"),
            "tokens/s vs host-RAM budget",
        )
        result.plots.append(str(path))
    return result
