"""The codec of moeqos.common.v1: plans, targets, tiers, pins, profiles, predictions, switch reports.

Every `*_from_proto` validates what it reads and raises `moeqos.core.errors.InvalidArgument` on malformed
input, so the servers' error map answers INVALID_ARGUMENT. Fields are converted one by one, by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp
from moeqos.core.batch import BatchCall, BatchStep
from moeqos.core.dense import DenseCost, DenseElement, DensePrecisions, dense_precisions
from moeqos.core.errors import InvalidArgument
from moeqos.core.plan import Assignment, Plan, parse_plan
from moeqos.core.precision import DEFAULT_GROUP_SIZE, Precision
from moeqos.core.profile import (
    PROFILE_VERSION,
    CallCost,
    Grid,
    HardwareIdentity,
    LoadCost,
    ModelIdentity,
    Profile,
    QualityPoint,
)
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.service_types import Prediction, SwitchReport
from moeqos.core.tier import TierBudget, TierStatus, validate_tier
from moeqos.proto.common.v1 import common_pb2 as pb

_OBJECTIVES = {Objective.SPEED: pb.OBJECTIVE_SPEED, Objective.QUALITY: pb.OBJECTIVE_QUALITY}
MAX_SPEC_EXPERTS = 1 << 16
"""Most experts (num_layers * num_experts) a plan given by its spec alone may name when no served model
fixes its shape: the plan is expanded expert by expert, so a larger shape would allocate without bound."""


def _invalid(what: str, exc: Exception) -> InvalidArgument:
    return InvalidArgument(f"{what}: {exc}")


def finite(name: str, value: float, minimum: float = 0.0) -> float:
    """`value` if it is a finite number >= minimum, else InvalidArgument naming the field."""
    if not math.isfinite(value) or value < minimum:
        raise InvalidArgument(f"{name} must be a finite number >= {minimum:g}, got {value}")
    return value


# ----- precision, tier, assignment, plan ------------------------------------------------------------
def precision_to_proto(precision: Precision) -> pb.Precision:
    # types-protobuf types EnumTypeWrapper.Value as returning a plain int
    return cast("pb.Precision", pb.Precision.Value(f"PRECISION_{precision.name}"))


def precision_from_proto(value: int) -> Precision:
    if value == pb.PRECISION_UNSPECIFIED or value not in pb.Precision.values():
        raise InvalidArgument(f"precision must be set to a known value, got {value}")
    return Precision[pb.Precision.Name(value).removeprefix("PRECISION_")]


def tier_from_proto(name: str) -> str:
    try:
        return validate_tier(name)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def assignment_to_proto(assignment: Assignment) -> pb.Assignment:
    return pb.Assignment(precision=precision_to_proto(assignment.precision), tier=assignment.tier)


def assignment_from_proto(message: pb.Assignment) -> Assignment:
    return Assignment(precision_from_proto(message.precision), tier_from_proto(message.tier))


def plan_to_proto(plan: Plan) -> pb.Plan:
    """The plan, layer-major, with its text form for people."""
    return pb.Plan(
        num_layers=plan.num_layers,
        num_experts=plan.num_experts,
        group_size=plan.group_size,
        assignments=[assignment_to_proto(a) for _, a in plan.items()],
        spec=plan.to_spec(),
        dense=_dense_to_proto(plan.dense),
    )


def _dense_to_proto(dense: DensePrecisions) -> list[pb.DensePrecision]:
    """A plan's dense part, one entry per element it names."""
    return [pb.DensePrecision(element=e.value, precision=precision_to_proto(p)) for e, p in dense]


def _dense_from_proto(messages: Iterable[pb.DensePrecision]) -> DensePrecisions:
    """A plan's dense part; InvalidArgument on an unknown element, a missing precision or a repeat."""
    pairs = [(m.element, precision_from_proto(m.precision).value) for m in messages]
    try:
        return dense_precisions(pairs)
    except ValueError as exc:
        raise _invalid("plan dense part", exc) from None


def plan_from_proto(message: pb.Plan, model: ModelIdentity | None = None, default_tier: str = "") -> Plan:
    """A validated plan from its assignments, its spec, or both (which must then describe the same plan).

    A plan given by its spec alone takes its shape from `model` (the served model) when given, else from
    num_layers and num_experts; `default_tier` is the tier of a precision the spec gives without one.
    InvalidArgument when the shape, an assignment, the spec or the group size is wrong, or when the
    assignments and the spec disagree.
    """
    dense = _dense_from_proto(message.dense)
    if not message.assignments and message.spec:
        from_spec = _plan_from_spec(message, model, default_tier)
        if dense and from_spec.dense and dense != from_spec.dense:
            raise InvalidArgument(f"the plan's dense part and its spec {message.spec!r} disagree")
        return from_spec.with_dense(dense) if dense else from_spec
    plan = _plan_from_assignments(message).with_dense(dense)
    # The spec a plan_to_proto wrote is the plan's own to_spec(): only another text needs parsing.
    if (
        message.spec
        and message.spec != plan.to_spec()
        and _plan_from_spec(message, model, default_tier) != plan
    ):
        raise InvalidArgument(f"the plan's assignments and its spec {message.spec!r} disagree")
    return plan


def _plan_from_assignments(message: pb.Plan) -> Plan:
    layers, experts = message.num_layers, message.num_experts
    if layers == 0 or experts == 0 or len(message.assignments) != layers * experts:
        raise InvalidArgument(
            f"plan must have num_layers x num_experts = {layers} x {experts} assignments, "
            f"got {len(message.assignments)}"
        )
    flat = [assignment_from_proto(a) for a in message.assignments]
    rows = tuple(tuple(flat[layer * experts : (layer + 1) * experts]) for layer in range(layers))
    try:
        return Plan(rows, message.group_size or DEFAULT_GROUP_SIZE)
    except ValueError as exc:
        raise _invalid("plan", exc) from None


def _plan_from_spec(message: pb.Plan, model: ModelIdentity | None, default_tier: str) -> Plan:
    given = (message.num_layers, message.num_experts)
    shape = (model.num_layers, model.num_experts) if model is not None else given
    if model is not None and any(given) and given != shape:
        raise InvalidArgument(
            f"plan is {given[0]} layers x {given[1]} experts, model is {shape[0]} x {shape[1]}"
        )
    if min(shape) == 0 or shape[0] * shape[1] > MAX_SPEC_EXPERTS:
        raise InvalidArgument(
            f"a plan given by its spec needs num_layers x num_experts in [1, {MAX_SPEC_EXPERTS}], "
            f"got {shape[0]} x {shape[1]}"
        )
    # Every rule is matched against every expert: a spec needs no more rules than experts (to_spec writes
    # fewer), and more would let one request keep the server busy for as long as it likes.
    if not message.spec.lstrip().startswith("{") and message.spec.count(",") > shape[0] * shape[1]:
        raise InvalidArgument(f"a plan spec may have at most one rule per expert ({shape[0] * shape[1]})")
    try:
        return parse_plan(message.spec, *shape, default_tier, message.group_size or DEFAULT_GROUP_SIZE)
    except ValueError as exc:
        raise _invalid(f"plan spec {message.spec!r}", exc) from None


# ----- QoS targets and tiers ----------------------------------------------------------------------
def target_to_proto(target: QosTarget) -> pb.QosTarget:
    objective = _OBJECTIVES[target.objective] if target.objective else pb.OBJECTIVE_UNSPECIFIED
    message = pb.QosTarget(objective=objective)
    if target.min_tokens_per_s is not None:
        message.min_tokens_per_s = target.min_tokens_per_s
    if target.max_perplexity is not None:
        message.max_perplexity = target.max_perplexity
    if target.max_perplexity_increase is not None:
        message.max_perplexity_increase = target.max_perplexity_increase
    return message


def target_from_proto(message: pb.QosTarget) -> QosTarget:
    """A validated target; absent bounds stay None (proto3 `optional` keeps presence)."""
    if message.objective not in pb.Objective.values():
        raise InvalidArgument(f"target: unknown objective {message.objective}")
    objective = {v: k for k, v in _OBJECTIVES.items()}.get(message.objective)
    try:
        return QosTarget(
            min_tokens_per_s=message.min_tokens_per_s if message.HasField("min_tokens_per_s") else None,
            max_perplexity=message.max_perplexity if message.HasField("max_perplexity") else None,
            max_perplexity_increase=(
                message.max_perplexity_increase if message.HasField("max_perplexity_increase") else None
            ),
            objective=objective,
        )
    except ValueError as exc:
        raise _invalid("target", exc) from None


def budget_to_proto(budget: TierBudget) -> pb.TierBudget:
    return pb.TierBudget(name=budget.name, budget_bytes=budget.budget_bytes)


def budgets_from_proto(messages: Iterable[pb.TierBudget]) -> tuple[TierBudget, ...]:
    """Validated budgets; a tier named twice is InvalidArgument."""
    budgets = tuple(TierBudget(tier_from_proto(m.name), int(m.budget_bytes)) for m in messages)
    names = [b.name for b in budgets]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"a tier is given more than one budget: {names}")
    return budgets


def tier_status_to_proto(status: TierStatus) -> pb.TierStatus:
    return pb.TierStatus(name=status.name, budget_bytes=status.budget_bytes, used_bytes=status.used_bytes)


def tier_status_from_proto(message: pb.TierStatus) -> TierStatus:
    return TierStatus(message.name, message.budget_bytes, message.used_bytes)


def pin_to_proto(rule: PlacementRule) -> pb.Pin:
    precision = precision_to_proto(rule.precision)
    return pb.Pin(pattern=rule.pattern, precision=precision, tier=rule.tier or "")


def pins_from_proto(messages: Iterable[pb.Pin]) -> tuple[PlacementRule, ...]:
    """Validated pin rules, in order (first match wins)."""
    try:
        return tuple(
            PlacementRule(m.pattern, precision_from_proto(m.precision), m.tier or None) for m in messages
        )
    except ValueError as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise _invalid("pin", exc) from None


# ----- profile ------------------------------------------------------------------------------------
def grid_to_proto(grid: Grid) -> pb.Grid:
    return pb.Grid(rows=[pb.Grid.Row(values=row) for row in grid])


def grid_from_proto(message: pb.Grid, name: str) -> Grid:
    rows = tuple(tuple(row.values) for row in message.rows)
    for row in rows:
        for value in row:
            finite(name, value)
    return rows


def model_to_proto(model: ModelIdentity) -> pb.ModelIdentity:
    return pb.ModelIdentity(
        name=model.name,
        fingerprint=model.fingerprint,
        num_layers=model.num_layers,
        num_experts=model.num_experts,
        top_k=model.top_k,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        vocab_size=model.vocab_size,
        dense_bytes=model.dense_bytes,
    )


def model_from_proto(message: pb.ModelIdentity) -> ModelIdentity:
    return ModelIdentity(
        name=message.name,
        fingerprint=message.fingerprint,
        num_layers=message.num_layers,
        num_experts=message.num_experts,
        top_k=message.top_k,
        hidden_size=message.hidden_size,
        intermediate_size=message.intermediate_size,
        vocab_size=message.vocab_size,
        dense_bytes=message.dense_bytes,
    )


def hardware_to_proto(hardware: HardwareIdentity) -> pb.HardwareIdentity:
    return pb.HardwareIdentity(
        device=hardware.device,
        device_name=hardware.device_name,
        host=hardware.host,
        threads=hardware.threads,
        torch_version=hardware.torch_version,
    )


def hardware_from_proto(message: pb.HardwareIdentity) -> HardwareIdentity:
    return HardwareIdentity(
        device=message.device,
        device_name=message.device_name,
        host=message.host,
        threads=message.threads,
        torch_version=message.torch_version,
    )


def profile_to_proto(profile: Profile) -> pb.Profile:
    return pb.Profile(
        model=model_to_proto(profile.model),
        hardware=hardware_to_proto(profile.hardware),
        calibration_corpus=profile.calibration_corpus,
        calibration_tokens=profile.calibration_tokens,
        frequency=grid_to_proto(profile.frequency),
        fixed_seconds=profile.fixed_seconds,
        call_costs=[
            pb.CallCost(
                precision=precision_to_proto(c.precision), tier=c.tier, bytes=c.bytes, seconds=c.seconds
            )
            for c in profile.call_costs
        ],
        load_costs=[
            pb.LoadCost(precision=precision_to_proto(c.precision), bytes=c.bytes, seconds=c.seconds)
            for c in profile.load_costs
        ],
        quant_error=[
            pb.QuantError(precision=precision_to_proto(p), error=grid_to_proto(g))
            for p, g in profile.quant_error.items()
        ],
        quality_points=[
            pb.QualityPoint(plan_spec=q.plan_spec, perplexity=q.perplexity, corpus=q.corpus, tokens=q.tokens)
            for q in profile.quality_points
        ],
        tiers=[budget_to_proto(t) for t in profile.tiers],
        disk_pool_slots=profile.disk_pool_slots,
        disk_reads=profile.disk_reads,
        group_size=profile.group_size,
        measured_at=profile.measured_at,
        version=profile.version,
        layer_kl=[pb.LayerKl(precision=precision_to_proto(p), kl=row) for p, row in profile.layer_kl.items()],
        sensitivity_tokens=profile.sensitivity_tokens,
        dense_costs=[dense_cost_to_proto(c) for c in profile.dense_costs],
        dense_precision=precision_to_proto(profile.dense_precision),
        batch_calls=[
            pb.BatchCall(
                precision=precision_to_proto(c.precision), tier=c.tier, tokens=c.tokens, ratio=c.ratio
            )
            for c in profile.batch_calls
        ],
        batch_steps=[
            pb.BatchStep(rows=s.rows, fixed_ratio=s.fixed_ratio, expert_scale=s.expert_scale)
            for s in profile.batch_steps
        ],
        error_overlap=profile.error_overlap,
        expert_alone=[
            pb.ExpertAlone(layer=layer, increase=row) for layer, row in profile.expert_alone.items()
        ],
        alone_tokens=profile.alone_tokens,
        layer_alone=profile.layer_alone,
        layer_alone_error=profile.layer_alone_error,
    )


def dense_cost_to_proto(cost: DenseCost) -> pb.DenseCost:
    return pb.DenseCost(
        element=cost.element.value,
        precision=precision_to_proto(cost.precision),
        bytes=cost.bytes,
        seconds=cost.seconds,
        log_ppl=cost.log_ppl,
    )


def dense_cost_from_proto(message: pb.DenseCost) -> DenseCost:
    """A validated dense cost; InvalidArgument on an unknown element or a number that is not finite."""
    try:
        element = DenseElement.parse(message.element)
    except ValueError as exc:
        raise _invalid("dense cost", exc) from None
    return DenseCost(
        element,
        precision_from_proto(message.precision),
        message.bytes,
        finite("dense seconds", message.seconds),
        finite("dense log_ppl", message.log_ppl, -math.inf),
    )


def profile_from_proto(message: pb.Profile) -> Profile:
    """A validated profile; InvalidArgument when a table has the wrong shape or a number is not finite."""
    try:
        return Profile(
            model=model_from_proto(message.model),
            hardware=hardware_from_proto(message.hardware),
            calibration_corpus=message.calibration_corpus,
            calibration_tokens=message.calibration_tokens,
            frequency=grid_from_proto(message.frequency, "frequency"),
            fixed_seconds=finite("fixed_seconds", message.fixed_seconds),
            call_costs=tuple(_call_cost(c) for c in message.call_costs),
            load_costs=tuple(
                LoadCost(precision_from_proto(c.precision), c.bytes, finite("load seconds", c.seconds))
                for c in message.load_costs
            ),
            quant_error={
                precision_from_proto(q.precision): grid_from_proto(q.error, "quant_error")
                for q in message.quant_error
            },
            quality_points=tuple(
                QualityPoint(q.plan_spec, finite("perplexity", q.perplexity, 1.0), q.corpus, q.tokens)
                for q in message.quality_points
            ),
            tiers=budgets_from_proto(message.tiers),
            disk_pool_slots=message.disk_pool_slots,
            disk_reads=message.disk_reads,
            group_size=message.group_size or DEFAULT_GROUP_SIZE,
            measured_at=message.measured_at,
            version=message.version or PROFILE_VERSION,
            layer_kl={
                precision_from_proto(k.precision): tuple(finite("layer_kl", v) for v in k.kl)
                for k in message.layer_kl
            },
            sensitivity_tokens=message.sensitivity_tokens,
            dense_costs=tuple(dense_cost_from_proto(c) for c in message.dense_costs),
            dense_precision=(
                precision_from_proto(message.dense_precision) if message.dense_precision else Precision.BF16
            ),
            batch_calls=tuple(
                BatchCall(precision_from_proto(c.precision), tier_from_proto(c.tier), c.tokens, c.ratio)
                for c in message.batch_calls
            ),
            batch_steps=tuple(BatchStep(s.rows, s.fixed_ratio, s.expert_scale) for s in message.batch_steps),
            error_overlap=tuple(finite("error_overlap", x) for x in message.error_overlap),
            expert_alone={
                a.layer: tuple(finite("expert_alone", v, -math.inf) for v in a.increase)
                for a in message.expert_alone
            },
            layer_alone=tuple(finite("layer_alone", v, -math.inf) for v in message.layer_alone),
            layer_alone_error=tuple(finite("layer_alone_error", v) for v in message.layer_alone_error),
            alone_tokens=message.alone_tokens,
        )
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise _invalid("profile", exc) from None


def _call_cost(message: pb.CallCost) -> CallCost:
    return CallCost(
        precision_from_proto(message.precision),
        tier_from_proto(message.tier),
        message.bytes,
        finite("call seconds", message.seconds),
    )


# ----- predictions, switch reports, times ---------------------------------------------------------
def prediction_to_proto(prediction: Prediction) -> pb.PlanPrediction:
    return pb.PlanPrediction(
        tokens_per_s=prediction.tokens_per_s,
        perplexity=prediction.perplexity,
        perplexity_is_estimate=prediction.perplexity_is_estimate,
        tier_use=[pb.TierUse(name=name, bytes=size) for name, size in prediction.tier_use.items()],
        notes=prediction.notes,
        concurrency=prediction.concurrency,
        aggregate_tokens_per_s=prediction.aggregate_tokens_per_s,
    )


def prediction_from_proto(message: pb.PlanPrediction) -> Prediction:
    return Prediction(
        tokens_per_s=message.tokens_per_s,
        perplexity=message.perplexity,
        perplexity_is_estimate=message.perplexity_is_estimate,
        tier_use={use.name: use.bytes for use in message.tier_use},
        notes=message.notes,
        concurrency=message.concurrency or 1,
    )


def switch_to_proto(report: SwitchReport) -> pb.SwitchReport:
    return pb.SwitchReport(experts_changed=report.experts_changed, seconds=report.seconds)


def switch_from_proto(message: pb.SwitchReport) -> SwitchReport:
    return SwitchReport(experts_changed=message.experts_changed, seconds=message.seconds)


def timestamp_to_proto(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return stamp


def timestamp_from_proto(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(UTC)
