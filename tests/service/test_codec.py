"""The wire codec (moeqos.api.codec): a round trip domain -> pb -> bytes -> pb -> domain for every type
it converts, presence of the optional fields, plans given by their spec, and InvalidArgument for
malformed messages."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from moeqos.api.codec import common as wire
from moeqos.api.codec import executor as ex_codec
from moeqos.api.codec import planner as pl_codec
from moeqos.core.batch import BatchCall, BatchStep
from moeqos.core.dense import DenseCost, DenseElement, DenseStatus
from moeqos.core.descriptions import HardwareDescription, TierSpec
from moeqos.core.errors import InvalidArgument
from moeqos.core.plan import Assignment, Plan, parse_plan
from moeqos.core.precision import Precision
from moeqos.core.profile import HardwareIdentity, ModelIdentity, Profile
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.service_types import (
    BudgetOutcome,
    ChatMessage,
    Completion,
    DeployOutcome,
    DeploySpec,
    Evaluation,
    ExecutorInfo,
    GenerationEvent,
    GenerationStats,
    LiveCalibration,
    PlanOutcome,
    Prediction,
    ProfileProgress,
    QosState,
    QosStatus,
    ReplanState,
    Sampling,
    SwitchReport,
    WhatIfOutcome,
)
from moeqos.core.tier import TierBudget, TierStatus
from moeqos.planner.catalog import HARDWARE, MODELS
from moeqos.planner.whatif import whatif_profile
from moeqos.proto.common.v1 import common_pb2
from moeqos.proto.executor.v1 import executor_pb2

PLAN = parse_plan("int4@cpu,L0.E1-2=bf16,L1.E*=int8@disk,L2.E3=fp32", 3, 4, "cpu", group_size=128)
MODEL = ModelIdentity("tiny", "abc123", 3, 4, 2, 64, 128, 1000, 4096)
HARDWARE_ID = HardwareIdentity("cpu", "Some CPU", "host-1", 2, "2.5.0")
PREDICTION = Prediction(12.5, 7.25, True, {"cpu": 1 << 20, "disk": 3}, "priors", 4)
STATS = GenerationStats(5, 3, 0.25, 40.0, 0.3, "stop", PLAN.to_spec())
TARGET = QosTarget(max_perplexity=12.5, objective=Objective.QUALITY)
PINS = (PlacementRule("L0.E*", Precision.BF16, "cpu"), PlacementRule("*", Precision.INT4))
ANALYTIC = whatif_profile(MODELS["mixtral-8x7b"], HARDWARE["a100-80gb"], {})
QOS = QosStatus(QosState.VIOLATED, True, 10.75, 15.5, 7.65, 3.0, "live: fixed x1.30", "floor violated")
QOS_BARE = QosStatus(QosState.NO_FLOOR, False, None, None, None, 3.0, "as measured", "")
CALIBRATION = LiveCalibration(1.25, 1.5, 42, 6.0)
WITH_KL = dataclasses.replace(
    ANALYTIC,
    layer_kl={
        Precision.INT4: tuple(0.01 * (layer + 1) for layer in range(len(ANALYTIC.frequency))),
        Precision.INT2: tuple(0.5 for _ in ANALYTIC.frequency),
    },
    sensitivity_tokens=128,
)

DENSE_PLAN = parse_plan("int4@cpu,L0.E1=bf16,head=int4,attn=int8", 3, 4, "cpu")
DENSE_COST = DenseCost(DenseElement.HEAD, Precision.INT4, 1 << 20, 2.5e-4, 0.0125)
DENSE_STATUS = (
    DenseStatus(DenseElement.ATTN, Precision.INT8, 1 << 21),
    DenseStatus(DenseElement.HEAD, Precision.BF16, 0),
)
WITH_DENSE = dataclasses.replace(
    ANALYTIC,
    dense_costs=(DENSE_COST, DenseCost(DenseElement.ATTN, Precision.BF16, 1 << 22, 1e-3, -0.001)),
    dense_precision=Precision.FP16,
)
WITH_MEASUREMENTS = dataclasses.replace(  # what a measured profile has and an analytic one does not
    ANALYTIC,
    error_overlap=tuple(0.25 + 0.01 * layer for layer in range(ANALYTIC.model.num_layers)),
    expert_alone={0: tuple(0.001 * e - 0.002 for e in range(ANALYTIC.model.num_experts))},  # some gain
    layer_alone=tuple(0.001 * layer - 0.001 for layer in range(ANALYTIC.model.num_layers)),  # some gain
    layer_alone_error=tuple(0.002 + 0.0001 * layer for layer in range(ANALYTIC.model.num_layers)),
    alone_tokens=1022,
    quant_error={Precision.INT4: tuple((0.125,) * ANALYTIC.model.num_experts for _ in ANALYTIC.frequency)},
    disk_reads="cached",
    group_size=32,
    measured_at="2026-12-05T00:00:00+00:00",
    version=9,
)
WITH_BATCH = dataclasses.replace(
    ANALYTIC,
    batch_calls=(BatchCall(Precision.INT4, "cpu", 16, 1.75), BatchCall(Precision.BF16, "cuda:0", 8, 1.25)),
    batch_steps=(BatchStep(4, 1.5, 1.25), BatchStep(16, 2.75, 0.875)),
)


def _info(**changes: Any) -> ExecutorInfo:
    values: dict[str, Any] = {
        "name": "executor-a",
        "model": MODEL,
        "hardware": HARDWARE_ID,
        "tiers": (TierStatus("cpu", 1 << 30, 1 << 20), TierStatus("disk", 0, 0)),
        "plan": PLAN,
        "plan_applied_at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "standing_target": TARGET,
        "planner_address": "127.0.0.1:50051",
        "active_generations": 2,
        "queued_generations": 1,
        "profile_cached": True,
        "replan_state": ReplanState.APPLIED,
        "replan_detail": PLAN.to_spec(),
        "damaged_files": 3,
        "integrity": "3 damaged, 2 mended; last: expert L1.E2 (int8): checkpoint unreadable",
        "standing_pins": PINS,
        "target_generation": 7,
        "max_batch_size": 16,
        "max_queued_generations": 8,
        "max_tokens_in_flight": 65536,
        "tokens_in_flight": 300,
        "variants_ahead": "done: int4 240, int2 skipped (needs 1.2 GiB, 900 MiB free)",
        "last_switch": SwitchReport(experts_changed=240, seconds=0.75),
    }
    return ExecutorInfo(**{**values, **changes})


# (name, value, to_proto, from_proto): every type the codec converts, both ways.
ROUND_TRIPS: list[tuple[str, Any, Callable[[Any], Any], Callable[[Any], Any]]] = [
    ("plan", PLAN, wire.plan_to_proto, wire.plan_from_proto),
    ("plan with a dense part", DENSE_PLAN, wire.plan_to_proto, wire.plan_from_proto),
    ("dense cost", DENSE_COST, wire.dense_cost_to_proto, wire.dense_cost_from_proto),
    ("profile with dense costs", WITH_DENSE, wire.profile_to_proto, wire.profile_from_proto),
    ("profile with batch timings", WITH_BATCH, wire.profile_to_proto, wire.profile_from_proto),
    ("measured profile", WITH_MEASUREMENTS, wire.profile_to_proto, wire.profile_from_proto),
    ("assignment", Assignment(Precision.INT3, "disk"), wire.assignment_to_proto, wire.assignment_from_proto),
    ("grid", ((0.5, 1.0), (2.0, 0.0)), wire.grid_to_proto, lambda m: wire.grid_from_proto(m, "grid")),
    ("target", TARGET, wire.target_to_proto, wire.target_from_proto),
    ("tier budget", TierBudget("disk", 7), wire.budget_to_proto, lambda m: wire.budgets_from_proto([m])[0]),
    ("tier status", TierStatus("cpu", 9, 4), wire.tier_status_to_proto, wire.tier_status_from_proto),
    ("pin", PINS[0], wire.pin_to_proto, lambda m: wire.pins_from_proto([m])[0]),
    ("pin without tier", PINS[1], wire.pin_to_proto, lambda m: wire.pins_from_proto([m])[0]),
    ("model identity", MODEL, wire.model_to_proto, wire.model_from_proto),
    ("hardware identity", HARDWARE_ID, wire.hardware_to_proto, wire.hardware_from_proto),
    ("analytic profile", ANALYTIC, wire.profile_to_proto, wire.profile_from_proto),
    ("profile with layer KL", WITH_KL, wire.profile_to_proto, wire.profile_from_proto),
    ("prediction", PREDICTION, wire.prediction_to_proto, wire.prediction_from_proto),
    ("switch report", SwitchReport(5, 0.125), wire.switch_to_proto, wire.switch_from_proto),
    ("timestamp", _info().plan_applied_at, wire.timestamp_to_proto, wire.timestamp_from_proto),
    ("executor info", _info(), ex_codec.info_to_proto, ex_codec.info_from_proto),
    ("executor info with qos", _info(qos=QOS), ex_codec.info_to_proto, ex_codec.info_from_proto),
    ("qos status", QOS, ex_codec.qos_status_to_proto, ex_codec.qos_status_from_proto),
    ("qos status, no floor", QOS_BARE, ex_codec.qos_status_to_proto, ex_codec.qos_status_from_proto),
    ("live calibration", CALIBRATION, ex_codec.calibration_to_proto, ex_codec.calibration_from_proto),
    (
        "calibrated profile",
        (ANALYTIC, CALIBRATION),
        lambda pair: ex_codec.profile_response_to_proto(*pair),
        ex_codec.profile_response_from_proto,
    ),
    (
        "measured profile reply",
        (ANALYTIC, None),
        lambda pair: ex_codec.profile_response_to_proto(*pair),
        ex_codec.profile_response_from_proto,
    ),
    (
        "executor info with a dense part",
        _info(plan=DENSE_PLAN, dense=DENSE_STATUS),
        ex_codec.info_to_proto,
        ex_codec.info_from_proto,
    ),
    ("dense status", DENSE_STATUS[0], ex_codec.dense_status_to_proto, ex_codec.dense_status_from_proto),
    (
        "executor info, no target, idle",
        _info(
            standing_target=None,
            plan_applied_at=None,
            replan_state=ReplanState.IDLE,
            replan_detail="",
            damaged_files=0,
            integrity="ok",
            standing_pins=(),
            target_generation=0,
            tokens_in_flight=0,
        ),
        ex_codec.info_to_proto,
        ex_codec.info_from_proto,
    ),
    (
        "budget outcome",
        BudgetOutcome(True, False, (TierStatus("cpu", 9, 4),)),
        ex_codec.budget_outcome_to_proto,
        ex_codec.budget_outcome_from_proto,
    ),
    (
        "sampling",
        Sampling(9, 0.7, 0.9, 40, 1234, ("\n\n", "END")),
        ex_codec.sampling_to_proto,
        ex_codec.sampling_from_proto,
    ),
    ("sampling defaults", Sampling(), ex_codec.sampling_to_proto, ex_codec.sampling_from_proto),
    (
        "chat message",
        ChatMessage("user", "hi\nthere"),
        ex_codec.chat_message_to_proto,
        ex_codec.chat_message_from_proto,
    ),
    ("generation stats", STATS, ex_codec.stats_to_proto, ex_codec.stats_from_proto),
    ("token event", GenerationEvent("lo", 0), ex_codec.event_to_proto, ex_codec.event_from_proto),
    ("last event", GenerationEvent("", None, STATS), ex_codec.event_to_proto, ex_codec.event_from_proto),
    ("completion", Completion("hello", STATS), ex_codec.completion_to_proto, ex_codec.completion_from_proto),
    (
        "evaluation",
        Evaluation(9.5, 33.0, 96, PLAN.to_spec(), "ptb:valid", 1.5, 32),
        ex_codec.evaluation_to_proto,
        ex_codec.evaluation_from_proto,
    ),
    (
        "evaluation without a decode",
        Evaluation(9.5, 0.0, 96, PLAN.to_spec(), "", 1.5, 0),
        ex_codec.evaluation_to_proto,
        ex_codec.evaluation_from_proto,
    ),
    (
        "profile progress",
        ProfileProgress("quality", 40, 100),
        ex_codec.measure_event_to_proto,
        ex_codec.measure_event_from_proto,
    ),
    ("measured profile", ANALYTIC, ex_codec.measure_event_to_proto, ex_codec.measure_event_from_proto),
    (
        "plan response",
        PlanOutcome(PLAN, PREDICTION, 0.5),
        pl_codec.outcome_to_response,
        pl_codec.outcome_from_proto,
    ),
    ("frontier point", PlanOutcome(PLAN, PREDICTION), pl_codec.outcome_to_point, pl_codec.outcome_from_proto),
    (
        "what-if",
        WhatIfOutcome(ANALYTIC, PlanOutcome(PLAN, PREDICTION), (PlanOutcome(PLAN, PREDICTION),) * 2),
        pl_codec.whatif_to_proto,
        pl_codec.whatif_from_proto,
    ),
    (
        "what-if, no target",
        WhatIfOutcome(ANALYTIC, None),
        pl_codec.whatif_to_proto,
        pl_codec.whatif_from_proto,
    ),
    (
        "deploy spec",
        DeploySpec("127.0.0.1:1", TARGET, (TierBudget("cpu", 5),), PINS, 8),
        pl_codec.deploy_spec_to_proto,
        pl_codec.deploy_spec_from_proto,
    ),
    (
        "deploy outcome",
        DeployOutcome("127.0.0.1:1", PLAN, PREDICTION, SwitchReport(3, 0.25)),
        pl_codec.deploy_outcome_to_proto,
        pl_codec.deploy_outcome_from_proto,
    ),
    ("model description", MODELS["mixtral-8x7b"], pl_codec.model_to_proto, pl_codec.model_from_proto),
    (
        "model description with shared experts and a head width",
        dataclasses.replace(MODELS["qwen1.5-moe-a2.7b"], head_dim=96),
        pl_codec.model_to_proto,
        pl_codec.model_from_proto,
    ),
    (
        "hardware description",
        HardwareDescription(
            "box",
            "cuda:0",
            (
                TierSpec("cuda:0", 1 << 34, 2e12),
                TierSpec("cpu", 1 << 36, 5e10),
                TierSpec("disk", 1 << 40, 3e9),
            ),
            1e14,
            1e12,
            link_bandwidth_bps=2.5e10,
            host_compute=False,
            call_overhead_s=1e-5,
            host_call_overhead_s=2e-5,
            layer_overhead_s=3e-4,
            reserve_bytes=1 << 31,
            disk_latency_s=2e-4,
            disk_pool_slots=3,
        ),
        pl_codec.hardware_to_proto,
        pl_codec.hardware_from_proto,
    ),
]


@pytest.mark.parametrize(
    ("value", "to_proto", "from_proto"), [r[1:] for r in ROUND_TRIPS], ids=[r[0] for r in ROUND_TRIPS]
)
def test_round_trip_through_bytes(value, to_proto, from_proto):
    message = to_proto(value)
    again = type(message).FromString(message.SerializeToString())
    assert again == message and from_proto(again) == value


def test_round_trips_cover_every_codec_function():
    """Every public to_proto/from_proto of the codec appears in ROUND_TRIPS (a new one needs a case)."""
    # Compared as function objects, not names: common and planner both have a `model_to_proto`.
    used = {f for _, _, to, back in ROUND_TRIPS for f in (to, back)}
    used |= {wire.budgets_from_proto, wire.pins_from_proto, wire.grid_from_proto}  # inside the lambdas above
    used |= {
        wire.precision_to_proto,
        wire.precision_from_proto,
        wire.tier_from_proto,
    }  # enums and names: below
    used |= {ex_codec.replan_state_to_proto, ex_codec.replan_state_from_proto}
    used |= {ex_codec.profile_response_to_proto}  # inside the lambdas above
    for module in (wire, ex_codec, pl_codec):
        names = [n for n in dir(module) if n.endswith(("_to_proto", "_from_proto")) and not n.startswith("_")]
        names += [n for n in dir(module) if n.startswith("outcome_to_")]
        public = {getattr(module, n) for n in names if getattr(module, n).__module__ == module.__name__}
        assert public <= used, sorted(f"{f.__module__}.{f.__name__}" for f in public - used)


@pytest.mark.parametrize("precision", list(Precision))
def test_every_precision_has_a_wire_value(precision):
    assert wire.precision_from_proto(wire.precision_to_proto(precision)) is precision


def test_tier_names_are_validated():
    assert wire.tier_from_proto("cuda:1") == "cuda:1"
    with pytest.raises(InvalidArgument):
        wire.tier_from_proto("gpu7")


@pytest.mark.parametrize("state", list(ReplanState))
def test_every_replan_state_has_a_wire_value(state):
    value = ex_codec.replan_state_to_proto(state)
    assert ex_codec.replan_state_from_proto(value) is state
    assert (value == executor_pb2.REPLAN_STATE_UNSPECIFIED) == (state is ReplanState.UNKNOWN)


def test_an_unknown_replan_state_reads_as_unknown():
    assert ex_codec.replan_state_from_proto(99) is ReplanState.UNKNOWN


@pytest.mark.parametrize("state", list(QosState))
def test_every_qos_state_has_a_wire_value(state):
    message = ex_codec.qos_status_to_proto(QosStatus(state, True, None, None, None, 1.0, "", ""))
    assert ex_codec.qos_status_from_proto(message).state is state
    assert (message.state == executor_pb2.QOS_STATE_UNSPECIFIED) == (state is QosState.UNKNOWN)


def test_an_unknown_qos_state_reads_as_unknown():
    message = executor_pb2.QosStatus(state=99)  # type: ignore[arg-type]
    assert ex_codec.qos_status_from_proto(message).state is QosState.UNKNOWN


def test_plan_round_trip_keeps_every_assignment():
    message = wire.plan_to_proto(PLAN)
    assert message.spec == PLAN.to_spec() and len(message.assignments) == 12
    assert wire.plan_from_proto(common_pb2.Plan.FromString(message.SerializeToString())) == PLAN


def test_a_plan_given_by_its_spec_alone():
    spec = "int4@cpu,L0.E1-2=bf16,L1.E*=int8@disk,L2.E3=fp32"
    shaped = common_pb2.Plan(num_layers=3, num_experts=4, group_size=128, spec=spec)
    assert wire.plan_from_proto(shaped) == PLAN
    # the shape and the tier of a bare precision come from the served model
    bare = common_pb2.Plan(group_size=128, spec="int4,L0.E1-2=bf16,L1.E*=int8@disk,L2.E3=fp32")
    assert wire.plan_from_proto(bare, MODEL, "cpu") == PLAN


def test_an_equivalent_spec_beside_the_assignments_is_accepted():
    message = wire.plan_to_proto(PLAN)
    message.spec = "int4@cpu,L0.E1=bf16@cpu,L0.E2=bf16@cpu,L1.E*=int8@disk,L2.E3=fp32@cpu"
    assert wire.plan_from_proto(message) == PLAN


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (wire.plan_to_proto(Plan.uniform(3, 4, "int4", "cpu")), "disagree"),
        (common_pb2.Plan(spec="int4@cpu"), "num_layers x num_experts"),
        (
            common_pb2.Plan(num_layers=1 << 16, num_experts=1 << 16, spec="int4@cpu"),
            "num_layers x num_experts",
        ),
        (common_pb2.Plan(num_layers=3, num_experts=4, spec="int4"), "tier"),
        (common_pb2.Plan(num_layers=3, num_experts=4, spec="L0.E0=int4@cpu"), "default"),
        (common_pb2.Plan(num_layers=3, num_experts=4, spec="{not json"), "spec"),
        (common_pb2.Plan(num_layers=3, num_experts=4, spec="int9@cpu"), "spec"),
        (
            common_pb2.Plan(num_layers=3, num_experts=4, spec="int4@cpu" + ",L0.E0=bf16" * 13),
            "one rule per expert",
        ),
    ],
    ids=[
        "disagree",
        "no-shape",
        "huge-shape",
        "no-tier",
        "no-default",
        "bad-json",
        "bad-precision",
        "too-many-rules",
    ],
)
def test_bad_or_disagreeing_specs_are_invalid_argument(message, match):
    if len(message.assignments) == 12:
        message.spec = PLAN.to_spec()  # assignments of one plan, the spec of another
    with pytest.raises(InvalidArgument, match=match):
        wire.plan_from_proto(message)


def test_a_spec_for_another_shape_than_the_model_is_invalid_argument():
    message = common_pb2.Plan(num_layers=2, num_experts=4, spec="int4@cpu")
    with pytest.raises(InvalidArgument, match="model is 3 x 4"):
        wire.plan_from_proto(message, MODEL, "cpu")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.assignments.pop(),
        lambda m: setattr(m.assignments[0], "precision", common_pb2.PRECISION_UNSPECIFIED),
        lambda m: setattr(m.assignments[0], "precision", 42),
        lambda m: setattr(m.assignments[0], "tier", "gpu7"),
        lambda m: setattr(m, "group_size", 10),
        lambda m: setattr(m, "num_layers", 0),
    ],
)
def test_malformed_plans_are_invalid_argument(mutate):
    message = wire.plan_to_proto(Plan.uniform(2, 3, Precision.INT4, "cpu"))
    mutate(message)
    with pytest.raises(InvalidArgument):
        wire.plan_from_proto(message)


@pytest.mark.parametrize(
    "target",
    [
        QosTarget(min_tokens_per_s=0.0),
        QosTarget(max_perplexity=12.5, objective=Objective.QUALITY),
        QosTarget(min_tokens_per_s=3, max_perplexity_increase=0.0),
        QosTarget(objective=Objective.SPEED),
    ],
)
def test_target_round_trip_keeps_presence(target):
    message = common_pb2.QosTarget.FromString(wire.target_to_proto(target).SerializeToString())
    assert wire.target_from_proto(message) == target


def test_unknown_objective_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="objective"):
        message = common_pb2.QosTarget(min_tokens_per_s=1)
        message.MergeFromString(b"\x20\x09")  # field 4 (objective) = 9, a value this build does not know
        wire.target_from_proto(message)


def test_pins_and_budgets():
    pins = PINS
    assert wire.pins_from_proto([wire.pin_to_proto(p) for p in pins]) == pins
    with pytest.raises(InvalidArgument):
        wire.pins_from_proto([common_pb2.Pin(pattern="L0.Ex", precision=common_pb2.PRECISION_INT4)])
    budgets = (TierBudget("cpu", 5), TierBudget("disk", 0))
    assert wire.budgets_from_proto([wire.budget_to_proto(b) for b in budgets]) == budgets
    with pytest.raises(InvalidArgument, match="more than one"):
        wire.budgets_from_proto([wire.budget_to_proto(budgets[0])] * 2)


def test_every_profile_field_crosses_the_wire() -> None:
    """Regression: `error_overlap` was left out of the proto, so the planner's quality model lost every
    layer's overlap and the demo's Deploy found no plan for a ceiling that all-bf16 met. Each field
    of Profile must be set (not its default) in some profile the round trips above carry."""
    carried = [value for _, value, to_proto, _ in ROUND_TRIPS if to_proto is wire.profile_to_proto]
    for field in dataclasses.fields(Profile):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            continue  # required: every profile sets it
        assert any(getattr(profile, field.name) != default for profile in carried), field.name


def test_profile_round_trip(executor_address):
    from moeqos.client import ExecutorClient

    with ExecutorClient(executor_address) as client:
        profile = client.get_profile()
    message = wire.profile_to_proto(profile)
    assert wire.profile_from_proto(common_pb2.Profile.FromString(message.SerializeToString())) == profile
    message.fixed_seconds = float("nan")
    with pytest.raises(InvalidArgument, match="fixed_seconds"):
        wire.profile_from_proto(message)


def test_a_profile_with_a_bad_layer_kl_is_invalid_argument():
    message = wire.profile_to_proto(WITH_KL)
    message.layer_kl[0].kl[0] = float("nan")
    with pytest.raises(InvalidArgument, match="layer_kl"):
        wire.profile_from_proto(message)
    del message.layer_kl[0].kl[0]
    with pytest.raises(InvalidArgument, match="layer_kl"):
        wire.profile_from_proto(message)


def test_a_plan_spec_with_a_dense_part_alone_and_beside_the_dense_field():
    spec = "int4@cpu,L0.E1=bf16,attn=int8,head=int4"
    alone = common_pb2.Plan(num_layers=3, num_experts=4, spec=spec)
    assert wire.plan_from_proto(alone) == DENSE_PLAN
    assert dict(DENSE_PLAN.dense) == {DenseElement.ATTN: Precision.INT8, DenseElement.HEAD: Precision.INT4}
    # a spec without dense rules keeps today's meaning: the dense part in the model's dense precision
    assert wire.plan_from_proto(common_pb2.Plan(num_layers=3, num_experts=4, spec="int4@cpu")).dense == ()


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (common_pb2.Plan(num_layers=3, num_experts=4, spec="int4@cpu,head=int4@disk"), "no tier"),
        (common_pb2.Plan(num_layers=3, num_experts=4, spec="int4@cpu,head=int4,head=int8"), "twice"),
        (
            common_pb2.Plan(
                num_layers=3,
                num_experts=4,
                spec="int4@cpu",
                dense=[common_pb2.DensePrecision(element="mlp", precision=common_pb2.PRECISION_INT4)],
            ),
            "unknown dense element",
        ),
        (
            common_pb2.Plan(
                num_layers=3,
                num_experts=4,
                spec="int4@cpu,head=int8",
                dense=[common_pb2.DensePrecision(element="head", precision=common_pb2.PRECISION_INT4)],
            ),
            "disagree",
        ),
        (
            common_pb2.Plan(
                num_layers=3,
                num_experts=4,
                spec="int4@cpu",
                dense=[common_pb2.DensePrecision(element="head")],
            ),
            "precision",
        ),
    ],
    ids=["tier", "twice", "unknown-element", "disagree", "no-precision"],
)
def test_bad_dense_parts_are_invalid_argument(message, match):
    with pytest.raises(InvalidArgument, match=match):
        wire.plan_from_proto(message)


@pytest.mark.parametrize("field", ["rows", "fixed_ratio"])
def test_a_batch_step_that_means_nothing_is_invalid_argument(field):
    message = wire.profile_to_proto(WITH_BATCH)
    setattr(message.batch_steps[0], field, 1 if field == "rows" else float("nan"))
    with pytest.raises(InvalidArgument, match="profile"):
        wire.profile_from_proto(message)


def test_a_profile_with_a_negative_or_missing_standard_error_is_rejected() -> None:
    message = wire.profile_to_proto(WITH_MEASUREMENTS)
    message.layer_alone_error[0] = -0.001
    with pytest.raises(InvalidArgument, match="layer_alone_error"):
        wire.profile_from_proto(message)
    del message.layer_alone_error[:]
    with pytest.raises(InvalidArgument, match="layer_alone_error"):
        wire.profile_from_proto(message)
