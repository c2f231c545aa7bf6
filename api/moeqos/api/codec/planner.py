"""The codec of moeqos.planner.v1: plan outcomes, deploy specs and outcomes, what-if answers, and the
model and hardware descriptions (moeqos.core.descriptions), both directions.

Fields are converted one by one, by name; absent optional hardware fields take the dataclass defaults.
"""

from __future__ import annotations

import math

from moeqos.api.codec import common
from moeqos.core.descriptions import HardwareDescription, ModelDescription, TierSpec
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.core.service_types import DeployOutcome, DeploySpec, PlanOutcome, WhatIfOutcome
from moeqos.proto.planner.v1 import planner_pb2 as pl

POSITIVE_MODEL_FIELDS = (
    "num_layers",
    "num_experts",
    "hidden_size",
    "intermediate_size",
    "top_k",
    "vocab_size",
    "num_heads",
    "num_kv_heads",
)
"""ModelDescription fields that must be at least 1."""
MAX_MODEL_EXPERTS = 1 << 16
"""Most experts (num_layers * num_experts) a described model may have: the planner holds arrays of that
size per precision and tier, so a larger one would make it allocate without bound."""
MAX_MODEL_WIDTH = 1 << 20
"""Largest hidden, intermediate and vocab size of a described model: beyond it the byte counts a profile
carries (uint64 on the wire) can overflow."""


# ----- plans and their predictions ----------------------------------------------------------------
def outcome_to_point(outcome: PlanOutcome) -> pl.FrontierPoint:
    """A plan with its predictions (a frontier point, or the best plan of a what-if)."""
    return pl.FrontierPoint(
        plan=common.plan_to_proto(outcome.plan), prediction=common.prediction_to_proto(outcome.prediction)
    )


def outcome_to_response(outcome: PlanOutcome) -> pl.PlanResponse:
    return pl.PlanResponse(
        plan=common.plan_to_proto(outcome.plan),
        prediction=common.prediction_to_proto(outcome.prediction),
        solve_seconds=outcome.solve_seconds,
    )


def outcome_from_proto(message: pl.PlanResponse | pl.FrontierPoint) -> PlanOutcome:
    """The outcome of a PlanResponse, or of a FrontierPoint (which carries no solve time)."""
    return PlanOutcome(
        plan=common.plan_from_proto(message.plan),
        prediction=common.prediction_from_proto(message.prediction),
        solve_seconds=message.solve_seconds if isinstance(message, pl.PlanResponse) else 0.0,
    )


def whatif_to_proto(outcome: WhatIfOutcome) -> pl.WhatIfResponse:
    message = pl.WhatIfResponse(
        profile=common.profile_to_proto(outcome.profile),
        frontier=[outcome_to_point(o) for o in outcome.frontier],
    )
    if outcome.best is not None:
        message.best.CopyFrom(outcome_to_point(outcome.best))
    return message


def whatif_from_proto(message: pl.WhatIfResponse) -> WhatIfOutcome:
    return WhatIfOutcome(
        profile=common.profile_from_proto(message.profile),
        best=outcome_from_proto(message.best) if message.HasField("best") else None,
        frontier=tuple(outcome_from_proto(p) for p in message.frontier),
    )


# ----- deployment ---------------------------------------------------------------------------------
def deploy_spec_to_proto(spec: DeploySpec) -> pl.DeployTarget:
    return pl.DeployTarget(
        executor_address=spec.executor_address,
        target=common.target_to_proto(spec.target),
        budgets=[common.budget_to_proto(b) for b in spec.budgets],
        pins=[common.pin_to_proto(p) for p in spec.pins],
        concurrency=spec.concurrency,
    )


def deploy_spec_from_proto(message: pl.DeployTarget) -> DeploySpec:
    """A validated spec (its target, budgets and pins checked as their own messages are)."""
    return DeploySpec(
        executor_address=message.executor_address,
        target=common.target_from_proto(message.target),
        budgets=common.budgets_from_proto(message.budgets),
        pins=common.pins_from_proto(message.pins),
        concurrency=message.concurrency,
    )


def deploy_outcome_to_proto(outcome: DeployOutcome) -> pl.DeployResult:
    return pl.DeployResult(
        executor_address=outcome.executor_address,
        plan=common.plan_to_proto(outcome.plan),
        prediction=common.prediction_to_proto(outcome.prediction),
        report=common.switch_to_proto(outcome.report),
    )


def deploy_outcome_from_proto(message: pl.DeployResult) -> DeployOutcome:
    return DeployOutcome(
        executor_address=message.executor_address,
        plan=common.plan_from_proto(message.plan),
        prediction=common.prediction_from_proto(message.prediction),
        report=common.switch_from_proto(message.report),
    )


# ----- model and hardware descriptions ------------------------------------------------------------
def model_to_proto(model: ModelDescription) -> pl.ModelDescription:
    return pl.ModelDescription(
        name=model.name,
        num_layers=model.num_layers,
        num_experts=model.num_experts,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        top_k=model.top_k,
        vocab_size=model.vocab_size,
        num_heads=model.num_heads,
        num_kv_heads=model.num_kv_heads,
        tied_embeddings=model.tied_embeddings,
        reference_perplexity=model.reference_perplexity,
        reference_source=model.reference_source,
        shared_experts=model.shared_experts,
        head_dim=model.head_dim,
    )


def model_from_proto(message: pl.ModelDescription) -> ModelDescription:
    """A validated description; InvalidArgument on bad numbers, OutOfRange on a model too large to plan."""
    model = ModelDescription(
        name=message.name,
        num_layers=message.num_layers,
        num_experts=message.num_experts,
        hidden_size=message.hidden_size,
        intermediate_size=message.intermediate_size,
        top_k=message.top_k,
        vocab_size=message.vocab_size,
        num_heads=message.num_heads,
        num_kv_heads=message.num_kv_heads,
        tied_embeddings=message.tied_embeddings,
        reference_perplexity=message.reference_perplexity,
        reference_source=message.reference_source,
        shared_experts=message.shared_experts,
        head_dim=message.head_dim,
    )
    _check_model(model)
    return model


def _check_model(model: ModelDescription) -> None:
    positive = (
        model.num_layers,
        model.num_experts,
        model.hidden_size,
        model.intermediate_size,
        model.top_k,
        model.vocab_size,
        model.num_heads,
        model.num_kv_heads,
    )
    if min(positive) < 1:
        raise InvalidArgument(f"model description: {', '.join(POSITIVE_MODEL_FIELDS)} must be positive")
    if model.num_kv_heads > model.num_heads or not math.isfinite(model.reference_perplexity):
        raise InvalidArgument(
            "model description: num_kv_heads must be <= num_heads, reference_perplexity finite"
        )
    if model.top_k > model.num_experts or model.reference_perplexity < 1:
        raise InvalidArgument("model description: top_k must be <= experts and reference_perplexity >= 1")
    _check_size(model)


def _check_size(model: ModelDescription) -> None:
    """OutOfRange for a model too large to plan for (checked here, at the edge, before any allocation)."""
    experts = model.num_layers * (model.num_experts + model.shared_experts)
    if experts > MAX_MODEL_EXPERTS:
        raise OutOfRange(
            f"model description: num_layers * num_experts must be <= {MAX_MODEL_EXPERTS}, got {experts}"
        )
    widths = (
        ("hidden_size", model.hidden_size),
        ("intermediate_size", model.intermediate_size),
        ("vocab_size", model.vocab_size),
    )
    for name, value in widths:
        if value > MAX_MODEL_WIDTH:
            raise OutOfRange(f"model description: {name} must be <= {MAX_MODEL_WIDTH}, got {value}")


def hardware_to_proto(hardware: HardwareDescription) -> pl.HardwareDescription:
    """The description (its `notes`, for people, stay behind)."""
    return pl.HardwareDescription(
        name=hardware.name,
        device=hardware.device,
        tiers=[
            pl.TierSpec(name=t.name, capacity_bytes=t.capacity_bytes, bandwidth_bps=t.bandwidth_bps)
            for t in hardware.tiers
        ],
        device_flops=hardware.device_flops,
        host_flops=hardware.host_flops,
        link_bandwidth_bps=hardware.link_bandwidth_bps,
        host_compute=hardware.host_compute,
        call_overhead_s=hardware.call_overhead_s,
        host_call_overhead_s=hardware.host_call_overhead_s,
        layer_overhead_s=hardware.layer_overhead_s,
        reserve_bytes=hardware.reserve_bytes,
        disk_latency_s=hardware.disk_latency_s,
        disk_pool_slots=hardware.disk_pool_slots,
    )


def hardware_from_proto(message: pl.HardwareDescription) -> HardwareDescription:
    """A validated description; InvalidArgument on unknown tiers, a missing device tier or bad numbers."""
    try:
        tiers = tuple(TierSpec(t.name, t.capacity_bytes, t.bandwidth_bps) for t in message.tiers)
    except ValueError as exc:
        raise InvalidArgument(f"hardware description: {exc}") from None
    if message.device not in {t.name for t in tiers} or any(not t.bandwidth_bps > 0 for t in tiers):
        raise InvalidArgument(
            "hardware description: the device must be one of the tiers, bandwidths positive"
        )
    if not (message.device_flops > 0 and message.host_flops > 0):
        raise InvalidArgument("hardware description: device_flops and host_flops must be positive")
    base = HardwareDescription(message.name, message.device, tiers, message.device_flops, message.host_flops)
    return HardwareDescription(
        name=base.name,
        device=base.device,
        tiers=base.tiers,
        device_flops=base.device_flops,
        host_flops=base.host_flops,
        link_bandwidth_bps=_number(message, "link_bandwidth_bps", base.link_bandwidth_bps),
        host_compute=message.host_compute if message.HasField("host_compute") else base.host_compute,
        call_overhead_s=_number(message, "call_overhead_s", base.call_overhead_s),
        host_call_overhead_s=_number(message, "host_call_overhead_s", base.host_call_overhead_s),
        layer_overhead_s=_number(message, "layer_overhead_s", base.layer_overhead_s),
        reserve_bytes=message.reserve_bytes if message.HasField("reserve_bytes") else base.reserve_bytes,
        disk_latency_s=_number(message, "disk_latency_s", base.disk_latency_s),
        disk_pool_slots=message.disk_pool_slots
        if message.HasField("disk_pool_slots")
        else base.disk_pool_slots,
    )


def _number(message: pl.HardwareDescription, field: str, default: float) -> float:
    """The optional field's value when present (a finite number >= 0), else the dataclass default."""
    if not message.HasField(field):
        return default
    return common.finite(f"hardware description: {field}", getattr(message, field))
