"""Build a `moeqos.core.profile.Profile`: what the planner needs to know about this executor and model.

Stages (reported to `progress(stage, fraction)`): `frequency` (route calibration tokens, counting expert calls
and capturing hidden states entering each MoE layer), `sensitivity` (the output KL divergence when one layer's
experts lose precision, moeqos.executor.sensitivity, on the first `sensitivity_tokens` calibration tokens),
`alone` (each layer whole and each expert of the loud layers alone, on up to ALONE_TOKENS quality tokens:
moeqos.core.sensitivity.loud_layers), `call_costs`, `load_costs`, `fixed` (with the call costs calibrated to
whole decode steps), `load_calibration` (the same for disk loads, with a disk tier only), `batch` (decode
steps on several streams at once, moeqos.executor.batch_costs), then `quant_error` (every expert in each
profiled precision against fp32 on the captured states), `quality` (perplexity of the given plans on
`quality_ids`, labelled `quality_corpus`) and `design` (then of the mixed plans
moeqos.executor.calibration_design derives from the signal and the uniform plans' increases, when the
sensitivity was measured) interleaved so that each variant is quantized once (moeqos.executor.quality_points,
moeqos.executor.variant_errors: a precision's errors on the variants its uniform plan then takes from the
memory cache, its designs right after that plan; the errors of precisions without a uniform plan first,
experts with bitwise identical weights, as in a sparse-upcycled model, measured once per layer there), `dense`
(each dense element's time and perplexity effect per precision, moeqos.executor.dense_profile, with
`dense_precisions` given; its base is the served plan's quality point when one was measured). Only the
profiled precisions get call costs, load costs and errors, so the planner (which offers the precisions with
call costs) never offers one without a quantization error. Time is bounded by `max_tokens`, `capture_tokens`
and `repeats`. The plan served is pinned throughout (`Measurable.serving`), its dense part in the dense
precision; the frequency and timing passes run `exclusive()`ly: generation pauses while they run.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from moeqos.core.errors import InvalidArgument
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision, groups_fit
from moeqos.core.profile import CallCost, Grid, LoadCost, Profile, QualityPoint
from moeqos.core.sensitivity import loud_layers, signal_grids
from moeqos.core.tier import DISK, TierBudget
from moeqos.executor.batch_costs import measure_batch
from moeqos.executor.calibration_design import designed_plans
from moeqos.executor.costs import calibrate, call_costs, load_costs
from moeqos.executor.dense_profile import DENSE_PRECISIONS, dense_costs
from moeqos.executor.disk_calibration import calibrate_loads
from moeqos.executor.error_overlap import error_overlap
from moeqos.executor.measurement import Measurable
from moeqos.executor.moe import observed
from moeqos.executor.quality_points import measure_quality, uniform_precision
from moeqos.executor.quant import QuantExpert, reference_expert_forward, relative_error
from moeqos.executor.sensitivity import Alone, alone_increases, layer_kl
from moeqos.executor.step_timing import STEP_PROMPT_TOKENS
from moeqos.executor.variant_errors import ReferenceOutputs, content_hash, variant_errors

Progress = Callable[[str, float], None]

SENSITIVITY_PRECISIONS = (Precision.INT4,)
"""Precisions whose layer KL is measured by default; the others borrow it, scaled by their errors
(moeqos.core.sensitivity): one forward pass per layer and precision is the stage's whole cost."""

ALONE_TOKENS = 2048
"""Quality tokens at most that the layers and the loud layers' experts are measured alone on (each a pass
from its layer on: about 22 passes' worth on the default model, 16 s on the product's 511 ptb:valid
tokens, 4x that on the bench's 2,048 ptb:test tokens): a long quality corpus does not multiply the stage."""

PLANNING_PRECISIONS = (
    Precision.BF16,
    Precision.INT8,
    Precision.INT4_G32,
    Precision.INT4,
    Precision.INT4_G128,
    Precision.INT3_G32,
    Precision.INT3,
    Precision.INT2_G32,
    Precision.INT2,
)
"""The precisions the planner mixes on any executor (see planning_precisions for the extras): each
grouped bit-width with several group sizes (int4: 32, 64, 128; int3 and int2: 32 and 64; every one
costs a uniform-plan perplexity in the profile, so the coarser sub-4-bit groups, the least accurate
options there are, are left to plans that name them)."""


def planning_precisions(device: str, dense: Precision = Precision.BF16) -> tuple[Precision, ...]:
    """The default profiled precisions: PLANNING_PRECISIONS, plus fp16 off the CPU (CPUs have no fast
    fp16 matmul, so there fp16 would only ever lose to bf16) and fp32 when the dense weights are fp32
    (an fp32 executor computes in fp32 anyway, so fp32 experts are a real option, often the fastest)."""
    extra = [
        p
        for p, wanted in ((Precision.FP32, dense == Precision.FP32), (Precision.FP16, device != "cpu"))
        if wanted
    ]
    return (*extra, *PLANNING_PRECISIONS)


def route_calibration(
    runtime: Measurable,
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

    with runtime.exclusive(), observed(runtime.moe_blocks(), observe):
        for start in range(0, len(ids), window):
            runtime.forward_logits(torch.tensor([ids[start : start + window]]), keep=1)
            progress("frequency", min(1.0, (start + window) / len(ids)))
    frequency = tuple(tuple(float(c) / len(ids) for c in row) for row in counts.tolist())
    return frequency, [torch.cat(c) for c in captured]


def quant_errors(
    runtime: Measurable,
    captured: list[torch.Tensor],
    precisions: Sequence[Precision],
    group_size: int,
    progress: Progress,
) -> dict[Precision, Grid]:
    """||y_q - y|| / ||y|| per precision and expert, y the fp32 expert on the captured states.

    Experts of a layer whose weights hash alike share one measurement (same weights, same inputs).
    """
    rows: dict[Precision, list[tuple[float, ...]]] = {p: [] for p in precisions}
    for layer in range(runtime.num_layers):
        x = captured[layer].to(runtime.config.device)  # [N, H] fp32
        measured: dict[str, dict[Precision, float]] = {}
        layer_errors = []
        for expert in range(runtime.num_experts):
            weights = runtime.factory.read_weights(layer, expert)
            key = content_hash(weights)
            if key not in measured:
                measured[key] = _expert_errors(runtime, weights, x, precisions, group_size)
            layer_errors.append(measured[key])
        for p, row in rows.items():
            row.append(tuple(e[p] for e in layer_errors))
        progress("quant_error", (layer + 1) / runtime.num_layers)
    return {p: tuple(row) for p, row in rows.items()}


def _expert_errors(
    runtime: Measurable,
    weights: Sequence[torch.Tensor],
    x: torch.Tensor,
    precisions: Sequence[Precision],
    group_size: int,
) -> dict[Precision, float]:
    device = runtime.config.device
    w1, w2, w3 = (w.to(device, torch.float32) for w in weights)
    y = reference_expert_forward(w1, w2, w3, x)  # [N, H]
    return {
        p: relative_error(
            QuantExpert.from_weights(w1, w2, w3, p, group_size=group_size, device=device)(x).float(), y
        )
        for p in precisions
    }


def recorded_disk_reads(runtime: Measurable) -> str:
    """What a profile of `runtime` records as its disk read mode: empty without a disk tier."""
    return runtime.config.disk_reads if DISK in runtime.budgets else ""


def build_profile(
    runtime: Measurable,
    calibration_ids: list[int],
    corpus_name: str,
    *,
    max_tokens: int,
    repeats: int,
    capture_tokens: int,
    window: int,
    quality_plans: Sequence[Plan],
    quality_ids: list[int] | None,
    quality_corpus: str | None,
    precisions: Sequence[Precision] | None,
    progress: Progress,
    sensitivity_tokens: int = 0,
    sensitivity_precisions: Sequence[Precision] = SENSITIVITY_PRECISIONS,
    dense_precisions: Sequence[Precision] = DENSE_PRECISIONS,
) -> Profile:
    """Measure everything a Profile holds (see the module docstring for the stages), the served plan
    pinned throughout.

    Bounded by `max_tokens` calibration tokens (routed in windows of `window`), `capture_tokens`
    hidden states per layer and `repeats` timings per cost. Quality points of `quality_plans` are
    measured on `quality_ids` labelled `quality_corpus` (both or neither; neither: on the calibration
    tokens, labelled `corpus_name`). `precisions` defaults to planning_precisions of the device.
    With `sensitivity_tokens` > 0 the layer KL of `sensitivity_precisions` (those profiled) is measured
    on that many calibration tokens, and with quality plans the designed mixed plans are measured too.
    The dense elements are measured in their dense precision and `dense_precisions` (those profiled;
    none: not measured, and the planner keeps the dense part as it is).
    """
    if (quality_ids is None) != (quality_corpus is None):
        raise InvalidArgument("quality_ids and quality_corpus go together: give both or neither")
    device, dense = runtime.config.device, runtime.config.dense_precision
    chosen = tuple(precisions) if precisions else planning_precisions(device, dense)
    # a named group size that does not divide this model's expert dimensions runs on the dequantize
    # fallback for some matrices (a short last group): applicable, never worth profiling
    chosen = tuple(p for p in chosen if groups_fit(p, *runtime.shape, runtime.plan.group_size))
    # The plan (and its group size) must not change under the measurement, and its dense part is the
    # dense precision's: the fixed cost is the planner's base, to which the dense elements add their deltas.
    with runtime.serving(runtime.plan.with_dense(())):
        ids = runtime.encode(calibration_ids)[:max_tokens]
        window = min(window, runtime.context_length)
        frequency, captured = route_calibration(runtime, ids, window, capture_tokens, progress)
        reference = max((p for p in chosen if p.is_float), key=lambda p: p.bits, default=Precision.BF16)
        kl_precisions = [p for p in sensitivity_precisions if p in chosen and not p.is_float]
        kl = (
            layer_kl(runtime, ids[:sensitivity_tokens], reference, kl_precisions, progress)
            if sensitivity_tokens > 0 and kl_precisions
            else {}
        )
        label, scored = quality_corpus or corpus_name, quality_ids or ids
        alone = measure_alone(runtime, scored, window, reference, kl, progress)
        timings = measure_timings(runtime, ids[:STEP_PROMPT_TOKENS], captured[0], chosen, repeats, progress)
        batch_calls, batch_steps = measure_batch(
            runtime, ids, captured[0], chosen, repeats, timings.fixed, timings.calls
        )
        progress("batch", 1.0)
        errors, overlap, points = _errors_and_quality(
            runtime,
            captured,
            chosen,
            reference,
            frequency,
            kl,
            alone,
            quality_plans,
            scored,
            label,
            window,
            progress,
        )
        lossy = [p for p in dense_precisions if p in chosen]
        # the dense stage's base is the served plan on the same tokens: measured already when it is one
        # of the quality plans (the bench's and a fresh executor's all-bf16)
        base = next((q.perplexity for q in points if q.plan_spec == runtime.plan.to_spec()), None)
        dense_part = dense_costs(runtime, lossy, scored, window, repeats, progress, base) if lossy else ()
        return Profile(
            model=runtime.model,
            hardware=runtime.hardware,
            calibration_corpus=corpus_name,
            calibration_tokens=len(ids),
            frequency=frequency,
            fixed_seconds=timings.fixed,
            call_costs=tuple(timings.calls),
            load_costs=tuple(timings.loads),
            quant_error=errors,
            quality_points=tuple(points),
            layer_kl=kl,
            sensitivity_tokens=min(sensitivity_tokens, len(ids)) if kl else 0,
            layer_alone=alone.layers,
            layer_alone_error=alone.layer_errors,
            expert_alone=alone.experts,
            alone_tokens=alone.tokens,
            error_overlap=overlap,
            dense_costs=dense_part,
            dense_precision=dense,
            batch_calls=tuple(batch_calls),
            batch_steps=tuple(batch_steps),
            tiers=tuple(TierBudget(name, budget) for name, budget in runtime.budgets.items()),
            disk_pool_slots=runtime.config.disk_pool_slots,
            disk_reads=recorded_disk_reads(runtime),
            group_size=runtime.plan.group_size,
            measured_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )


@dataclass(frozen=True)
class Timings:
    """The timed parts of a profile."""

    fixed: float
    calls: list[CallCost]
    loads: list[LoadCost]


def measure_timings(
    runtime: Measurable,
    prompt: list[int],
    x: torch.Tensor,
    precisions: Sequence[Precision],
    repeats: int,
    progress: Progress,
) -> Timings:
    """Call costs (on hidden states `x` [N, H]), load costs with a disk tier, and the fixed decode cost,
    calibrated on decode steps after `prompt` (stages `call_costs` to `load_calibration`)."""
    group_size = runtime.plan.group_size
    costs = call_costs(runtime, x, precisions, repeats, group_size)
    progress("call_costs", 1.0)
    loads = load_costs(runtime, precisions, repeats, group_size) if DISK in runtime.budgets else []
    progress("load_costs", 1.0)
    fixed, costs = calibrate(runtime, prompt, repeats, costs)
    progress("fixed", 1.0)
    if loads:
        loads = calibrate_loads(runtime, prompt, repeats, fixed, costs, loads)
        progress("load_calibration", 1.0)
    return Timings(fixed, costs, loads)


def measure_alone(
    runtime: Measurable,
    ids: list[int],
    window: int,
    reference: Precision,
    kl: Mapping[Precision, Sequence[float]],
    progress: Progress,
) -> Alone:
    """Each layer whole and the loud layers' experts alone in the first KL precision, on the first
    ALONE_TOKENS of `ids` (the quality tokens) in windows of `window` (stage `alone`); empty without a
    KL."""
    anchor = next(iter(kl), None)
    measured = ids[:ALONE_TOKENS]
    windows = [measured[start : start + window] for start in range(0, len(measured), window)]
    windows = [w for w in windows if len(w) > 1]
    if anchor is None or not windows:
        return Alone()
    loud = loud_layers(kl[anchor])
    return alone_increases(runtime, windows, reference, anchor, loud, progress)


def _errors_and_quality(
    runtime: Measurable,
    captured: list[torch.Tensor],
    chosen: Sequence[Precision],
    reference: Precision,
    frequency: Grid,
    kl: dict[Precision, tuple[float, ...]],
    alone: Alone,
    plans: Sequence[Plan],
    ids: list[int],
    label: str,
    window: int,
    progress: Progress,
) -> tuple[dict[Precision, Grid], tuple[float, ...], list[QualityPoint]]:
    """(quantization errors of `chosen`, the layers' error overlap, quality points of `plans` and their
    designs): the stages `quant_error`, `quality` and `design` sharing their quantization. A lossy
    precision with a uniform plan among `plans` has its errors measured on the variants that plan then
    takes from the memory cache (moeqos.executor.variant_errors), right before it; the others (and the
    float precisions: cheap, and the served plan's experts are not built) are measured directly, first.
    The overlap (moeqos.executor.error_overlap; empty without a layer KL) is measured in the first
    precision of `kl` right after its errors, on the same cached variants."""
    group_size = runtime.plan.group_size
    uniform = {uniform_precision(plan) for plan in plans}
    shared = [p for p in chosen if p in uniform and not p.is_float]
    direct = [p for p in chosen if p not in shared]
    share = len(direct) / len(chosen)
    errors = (
        quant_errors(runtime, captured, direct, group_size, lambda s, f: progress(s, f * share))
        if direct
        else {}
    )
    references = ReferenceOutputs(runtime, captured)
    anchor = next(iter(kl), None)
    overlap: tuple[float, ...] = ()

    def before(precision: Precision) -> None:
        nonlocal overlap
        if precision in shared and precision not in errors:
            errors[precision] = variant_errors(runtime, references, precision)
            progress("quant_error", len(errors) / len(chosen))
        if precision == anchor and not overlap:
            overlap = error_overlap(runtime, references, precision)

    def designer(increases: Mapping[Precision, float]) -> list[Plan]:
        if not kl:
            return []
        chosen = [q for q in increases if q in errors]
        signal = signal_grids(frequency, errors, kl, chosen, alone.experts, alone.layers, alone.layer_errors)
        return designed_plans(signal, reference, increases, kl, runtime.config.device, group_size)

    points = measure_quality(
        runtime, plans, ids, label, window, progress, reference, designer if kl else None, kl, before
    )
    if anchor is not None and not overlap:  # no uniform plan of the anchor among `plans`
        before(anchor)
    return {p: errors[p] for p in chosen}, overlap, points
