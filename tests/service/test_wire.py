"""pb2 <-> domain conversions (moeqos.api.wire): round trips, presence of the
optional QoS bounds, and InvalidArgument for malformed messages."""

from __future__ import annotations

import pytest
from moeqos.api import wire
from moeqos.core.errors import InvalidArgument
from moeqos.core.plan import Plan, parse_plan
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.tier import TierBudget
from moeqos.proto.common.v1 import common_pb2


def test_plan_round_trip_keeps_every_assignment():
    plan = parse_plan("int4@cpu,L0.E1-2=bf16,L1.E*=int8@disk,L2.E3=fp32", 3, 4, "cpu", group_size=128)
    message = wire.plan_to_proto(plan)
    assert message.spec == plan.to_spec() and len(message.assignments) == 12
    assert wire.plan_from_proto(common_pb2.Plan.FromString(message.SerializeToString())) == plan


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
    pins = (PlacementRule("L0.E*", Precision.BF16, "cpu"), PlacementRule("*", Precision.INT4))
    assert wire.pins_from_proto([wire.pin_to_proto(p) for p in pins]) == pins
    with pytest.raises(InvalidArgument):
        wire.pins_from_proto([common_pb2.Pin(pattern="L0.Ex", precision=common_pb2.PRECISION_INT4)])
    budgets = (TierBudget("cpu", 5), TierBudget("disk", 0))
    assert wire.budgets_from_proto([wire.budget_to_proto(b) for b in budgets]) == budgets
    with pytest.raises(InvalidArgument, match="more than one"):
        wire.budgets_from_proto([wire.budget_to_proto(budgets[0])] * 2)


def test_profile_round_trip(executor_address):
    from moeqos.client import ExecutorClient

    with ExecutorClient(executor_address) as client:
        profile = client.get_profile()
    message = wire.profile_to_proto(profile)
    assert wire.profile_from_proto(common_pb2.Profile.FromString(message.SerializeToString())) == profile
    message.fixed_seconds = float("nan")
    with pytest.raises(InvalidArgument, match="fixed_seconds"):
        wire.profile_from_proto(message)


def test_profile_round_trip_keeps_the_layer_kl_and_rejects_a_bad_one():
    from tests.planner.test_sensitivity import known_profile

    profile = known_profile()
    message = wire.profile_to_proto(profile)
    back = wire.profile_from_proto(common_pb2.Profile.FromString(message.SerializeToString()))
    assert back == profile and back.layer_kl[Precision.INT4][-1] == pytest.approx(0.12)
    message.layer_kl[0].kl[0] = float("nan")
    with pytest.raises(InvalidArgument, match="layer_kl"):
        wire.profile_from_proto(message)
    del message.layer_kl[0].kl[0]
    with pytest.raises(InvalidArgument, match="layer_kl"):
        wire.profile_from_proto(message)
