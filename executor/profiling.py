"""Build a `moeqos.profile.Profile`: what the planner needs to know about this executor and model.

Stages (reported to `progress(stage, fraction)`): `frequency` (route calibration tokens, counting
expert calls and capturing hidden states entering each MoE layer), `quant_error` (every expert in every
precision against fp32 on the captured states), `call_costs`, `load_costs`, `fixed`, `quality`
(perplexity of the given plans). Time is bounded by `max_tokens`, `capture_tokens` and `repeats`.
The frequency and timing passes hold the model lock: generation pauses while they run.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from executor.costs import call_costs, fixed_seconds, load_costs
from executor.evaluation import evaluate
from executor.loader import moe_blocks
from executor.quant import QuantExpert, reference_expert_forward, relative_error
from moeqos.plan import Plan
from moeqos.precision import Precision
from moeqos.profile import Grid, Profile, QualityPoint
from moeqos.tier import DISK, TierBudget

if TYPE_CHECKING:
    from executor.runtime import ExecutorRuntime

Progress = Callable[[str, float], None]


def route_calibration(
    runtime: ExecutorRuntime,
    ids: list[int],
    window: int,
    capture_tokens: int,
    progress: Progress,
) -> tuple[Grid, list[torch.Tensor]]:
    """Frequencies [L][E] (calls per token) and up to `capture_tokens` hidden states [N, H] per layer."""
    counts = torch.zeros(runtime.num_layers, runtime.num_experts, dtype=torch.float64)  # [L, E]
    captured: list[list[torch.Tensor]] = [[] for _ in range(runtime.num_layers)]

    def observe(layer: int, hidden: torch.Tensor, index: torch.Tensor) -> None:
        counts[layer] += torch.bincount(index.flatten().cpu(), minlength=runtime.num_experts).double()
        room = capture_tokens - sum(len(c) for c in captured[layer])
        if room > 0:
            captured[layer].append(hidden[:room].detach().float().cpu())  # [<=room, H]

    blocks = moe_blocks(runtime.lm, runtime.adapter)
    with runtime.model_lock:
        for block in blocks:
            block.observer = observe
        try:
            for start in range(0, len(ids), window):
                runtime.forward_logits(torch.tensor([ids[start : start + window]]), keep=1)
                progress("frequency", min(1.0, (start + window) / len(ids)))
        finally:
            for block in blocks:
                block.observer = None
    frequency = tuple(tuple(float(c) / len(ids) for c in row) for row in counts.tolist())
    return frequency, [torch.cat(c) for c in captured]


def quant_errors(
    runtime: ExecutorRuntime, captured: list[torch.Tensor], group_size: int, progress: Progress
) -> dict[Precision, Grid]:
    """||y_q - y|| / ||y|| per precision and expert, y the fp32 expert on the captured states."""
    device = runtime.config.device
    rows: dict[Precision, list[list[float]]] = {p: [] for p in Precision}
    for layer in range(runtime.num_layers):
        x = captured[layer].to(device)  # [N, H] fp32
        for row in rows.values():
            row.append([])
        for expert in range(runtime.num_experts):
            w1, w2, w3 = (w.to(device, torch.float32) for w in runtime.factory.read_weights(layer, expert))
            y = reference_expert_forward(w1, w2, w3, x)  # [N, H]
            for precision, row in rows.items():
                q = QuantExpert.from_weights(w1, w2, w3, precision, group_size=group_size, device=device)
                row[layer].append(relative_error(q(x).float(), y))
        progress("quant_error", (layer + 1) / runtime.num_layers)
    return {p: tuple(tuple(r) for r in row) for p, row in rows.items()}


def build_profile(
    runtime: ExecutorRuntime,
    calibration_ids: list[int],
    corpus_name: str,
    *,
    max_tokens: int,
    repeats: int,
    capture_tokens: int,
    window: int,
    quality_plans: Sequence[Plan],
    quality_ids: list[int] | None,
    progress: Progress,
) -> Profile:
    """Measure everything a Profile holds (see the module docstring for the stages)."""
    ids = runtime.encode(calibration_ids)[:max_tokens]
    group_size = runtime.plan.group_size
    frequency, captured = route_calibration(
        runtime, ids, min(window, runtime.context_length), capture_tokens, progress
    )
    errors = quant_errors(runtime, captured, group_size, progress)
    costs = call_costs(runtime, captured[0], repeats, group_size)
    progress("call_costs", 1.0)
    loads = load_costs(runtime, repeats, group_size) if DISK in runtime.budgets else []
    progress("load_costs", 1.0)
    fixed = fixed_seconds(runtime, ids[:16], repeats)
    progress("fixed", 1.0)
    points = []
    for done, plan in enumerate(quality_plans):
        result = evaluate(runtime, quality_ids or ids, plan, min(window, runtime.context_length), None, 0)
        points.append(QualityPoint(plan.to_spec(), result.perplexity, corpus_name, result.tokens_scored))
        progress("quality", (done + 1) / len(quality_plans))
    return Profile(
        model=runtime.model,
        hardware=runtime.hardware,
        calibration_corpus=corpus_name,
        calibration_tokens=len(ids),
        frequency=frequency,
        fixed_seconds=fixed,
        call_costs=tuple(costs),
        load_costs=tuple(loads),
        quant_error=errors,
        quality_points=tuple(points),
        tiers=tuple(TierBudget(name, budget) for name, budget in runtime.budgets.items()),
        disk_pool_slots=runtime.config.disk_pool_slots,
        group_size=group_size,
        measured_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
