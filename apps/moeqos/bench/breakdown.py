"""Section `breakdown`: where a decode step's time goes, per uniform plan (bf16, int8, int4 on the device).

torch.profiler over `decode_tokens` single-token steps of each plan after prefilling the decode
prompt, split into experts, routing (the MoE block around them), attention, norms, lm head, embedding
and the rest (see moeqos.executor.step_profile). Run it before and after a change to see what the
change removed; the profiler's own cost is in every figure, so compare splits, not absolute speeds.
"""

from __future__ import annotations

from typing import Any

from moeqos.bench.report import SectionResult, table
from moeqos.core.precision import Precision

PRECISIONS = (Precision.BF16, Precision.INT8, Precision.INT4)


def run(ctx: Any) -> SectionResult:
    """One profiled decode per uniform plan: ms per step in all and per part, and the top ops."""
    from moeqos.executor.step_profile import PARTS, decode_breakdown

    steps = ctx.settings.decode_tokens
    rows, data, notes = [], [], []
    for precision in PRECISIONS:
        plan = ctx.uniform(precision)
        ctx.log(f"profiling decode steps of {plan.describe()}")
        ctx.apply(plan)
        found = decode_breakdown(ctx.runtime, ctx.runtime.lm, ctx.prompt_ids, steps, ctx.runtime.decoder)
        name = f"all-{precision.value}"
        rows.append([name, found.step_seconds * 1e3, *(found.parts[p] * 1e3 for p in PARTS)])
        ops = ", ".join(f"{op} {sec * 1e3:.2f} ms x{calls:g}" for op, sec, calls in found.top_ops[:5])
        notes.append(f"{name} top ops (self ms per step x calls): {ops}")
        data.append(
            {
                "plan": name,
                "spec": plan.to_spec(),
                "step_seconds": found.step_seconds,
                "parts_seconds": found.parts,
                "top_ops": [{"op": o, "seconds": s, "calls": c} for o, s, c in found.top_ops],
            }
        )
    notes.insert(
        0, f"{steps} single-token steps per plan after a {len(ctx.prompt_ids)}-token prompt, ms/step"
    )
    columns = ["plan", "step", *PARTS]
    result = SectionResult("breakdown")
    result.tables.append(table("breakdown: where a decode step's time goes (ms)", columns, rows, notes))
    result.data = {"steps": steps, "plans": data}
    return result
