"""The planner service through the real client: Plan from a profile or an executor address, WhatIf,
infeasible targets with their closest point, and server-side validation of raw requests."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from moeqos.api.grpc_errors import CLOSEST_KEY
from moeqos.client import DeploySpec, ExecutorClient, PlannerClient
from moeqos.core.errors import InfeasibleTarget, InvalidArgument, OutOfRange, Unavailable
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.tier import TierBudget
from moeqos.planner.catalog import HARDWARE, MODELS
from moeqos.planner.dense_model import DenseModel
from moeqos.proto.common.v1 import common_pb2
from moeqos.proto.planner.v1 import planner_pb2, planner_pb2_grpc

EASY = QosTarget(min_tokens_per_s=0.001)


@pytest.fixture(scope="module")
def profile(executor_address: str):
    with ExecutorClient(executor_address) as executor:
        return executor.get_profile()


def test_plan_from_profile_matches_plan_from_executor_address(planner_address, executor_address, profile):
    budgets = (TierBudget("cpu", 1 << 20),)
    with PlannerClient(planner_address) as planner:
        inline = planner.plan(EASY, profile=profile, budgets=budgets)
        fetched = planner.plan(EASY, executor=executor_address, budgets=budgets)
    assert inline.plan == fetched.plan
    inline.plan.check_shape(profile.model.num_layers, profile.model.num_experts)
    assert inline.prediction.tokens_per_s >= 0.001
    # the device tier's use includes the dense part's bytes beyond the dense precision's (moeqos.core.dense)
    expected = inline.plan.bytes_per_tier(profile.expert_bytes())
    for tier, delta in DenseModel.fit(profile).plan_bytes(inline.plan.dense).items():
        expected[tier] = expected.get(tier, 0) + delta
    assert inline.prediction.tier_use == expected
    assert sum(inline.prediction.tier_use.values()) <= 1 << 20


def test_pins_are_kept(planner_address, profile):
    pins = (PlacementRule("L0.E0", profile.precisions[0], "cpu"),)
    with PlannerClient(planner_address) as planner:
        outcome = planner.plan(EASY, profile=profile, budgets=(TierBudget("cpu", 1 << 20),), pins=pins)
    assert outcome.plan[0, 0].precision == profile.precisions[0]
    assert outcome.plan[0, 0].tier == "cpu"


def test_infeasible_target_carries_the_closest_point(planner_address, profile):
    with PlannerClient(planner_address) as planner, pytest.raises(InfeasibleTarget) as caught:
        planner.plan(QosTarget(min_tokens_per_s=1e12), profile=profile)
    assert caught.value.closest["predicted_tokens_per_s"] > 0
    assert "plan_spec" in caught.value.closest


def test_infeasible_status_is_failed_precondition_with_json_trailer(planner_address, profile):
    stub = planner_pb2_grpc.PlannerServiceStub(grpc.insecure_channel(planner_address))
    request = planner_pb2.PlanRequest(
        source=planner_pb2.ProfileSource(profile=_proto_profile(profile)),
        target=common_pb2.QosTarget(min_tokens_per_s=1e12),
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Plan(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert any(key == CLOSEST_KEY for key, _ in caught.value.trailing_metadata())


@pytest.mark.parametrize(
    "target",
    [
        common_pb2.QosTarget(max_perplexity=0.5),
        common_pb2.QosTarget(min_tokens_per_s=float("nan")),
        common_pb2.QosTarget(max_perplexity=5, max_perplexity_increase=1),
        common_pb2.QosTarget(),
    ],
)
def test_raw_invalid_targets_are_invalid_argument(planner_address, profile, target):
    stub = planner_pb2_grpc.PlannerServiceStub(grpc.insecure_channel(planner_address))
    request = planner_pb2.PlanRequest(
        source=planner_pb2.ProfileSource(profile=_proto_profile(profile)), target=target
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Plan(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_malformed_profile_is_invalid_argument(planner_address, profile):
    message = _proto_profile(profile)
    del message.frequency.rows[-1]
    with PlannerClient(planner_address) as planner, pytest.raises(InvalidArgument, match="frequency"):
        planner._unary(
            planner._stub.Plan,
            planner_pb2.PlanRequest(source=planner_pb2.ProfileSource(profile=message), target=_easy_proto()),
        )


def test_unreachable_executor_is_unavailable(planner_address):
    with PlannerClient(planner_address) as planner, pytest.raises(Unavailable):
        planner.plan(EASY, executor="127.0.0.1:1")


def test_whatif_on_built_in_descriptions(planner_address):
    with PlannerClient(planner_address) as planner:
        outcome = planner.whatif("mixtral-8x7b", "a100-80gb", target=QosTarget(max_perplexity_increase=0.5))
    assert outcome.best is not None
    assert outcome.profile.model.num_experts == MODELS["mixtral-8x7b"].num_experts
    assert outcome.best.prediction.perplexity <= MODELS["mixtral-8x7b"].reference_perplexity + 0.5 + 1e-6


def test_whatif_with_described_hardware_and_unknown_names(planner_address):
    with PlannerClient(planner_address) as planner:
        described = planner.whatif(MODELS["mixtral-8x7b"], HARDWARE["a100-80gb"], target=EASY)
        named = planner.whatif("mixtral-8x7b", "a100-80gb", target=EASY)
        assert described.best is not None and named.best is not None
        assert described.best.plan == named.best.plan
        with pytest.raises(InvalidArgument, match="unknown hardware"):
            planner.whatif("mixtral-8x7b", "/etc/passwd.json")


def _proto_profile(profile):
    from moeqos.api.codec import common

    return common.profile_to_proto(profile)


def _easy_proto():
    from moeqos.api.codec import common

    return common.target_to_proto(EASY)


def test_frontier_is_pareto_ordered_and_bounded(planner_address, executor_address):
    with PlannerClient(planner_address) as planner:
        points = planner.frontier(executor=executor_address, points=5)
        with pytest.raises(OutOfRange):
            planner.frontier(executor=executor_address, points=1000)
    speeds = [p.prediction.tokens_per_s for p in points]
    ppls = [p.prediction.perplexity for p in points]
    assert 1 <= len(points) <= 5 and speeds == sorted(speeds)
    assert ppls == sorted(ppls)  # slower plans are more accurate


def test_whatif_frontier(planner_address):
    with PlannerClient(planner_address) as planner:
        outcome = planner.whatif("mixtral-8x7b", "a100-80gb", frontier_points=4)
    assert outcome.best is None and 1 <= len(outcome.frontier) <= 4


def test_deploy_with_one_bad_target_changes_no_executor(planner_address, executor_address):
    good = DeploySpec(executor_address, QosTarget(objective=Objective.SPEED))
    unreachable = DeploySpec("127.0.0.1:1", QosTarget(min_tokens_per_s=0.001))
    impossible = DeploySpec(executor_address, QosTarget(min_tokens_per_s=1e12))
    same_executor = DeploySpec(executor_address.replace("127.0.0.1", "localhost"), impossible.target)
    with ExecutorClient(executor_address) as executor, PlannerClient(planner_address) as planner:
        before = executor.info()
        with pytest.raises(Unavailable):
            planner.deploy([good, unreachable])
        with pytest.raises(InfeasibleTarget):
            planner.deploy([impossible])
        with pytest.raises(InvalidArgument, match="name the same executor"):  # one executor, two spellings
            planner.deploy([good, same_executor])
        after = executor.info()
    assert (after.plan, after.plan_applied_at, after.standing_target) == (
        before.plan,
        before.plan_applied_at,
        before.standing_target,
    )


def test_whatif_descriptions_that_do_not_combine_are_invalid_argument(planner_address):
    model = dataclasses.replace(MODELS["mixtral-8x7b"], num_heads=0)
    copy_over_nothing = dataclasses.replace(HARDWARE["a100-80gb"], host_compute=False, link_bandwidth_bps=0.0)
    with PlannerClient(planner_address) as planner:
        with pytest.raises(InvalidArgument, match="num_heads"):
            planner.whatif(model, "a100-80gb", target=EASY)
        with pytest.raises(InvalidArgument, match="combine"):
            planner.whatif("mixtral-8x7b", copy_over_nothing, target=EASY)


def test_whatif_budgets_are_tier_capacities_as_in_the_cli(planner_address):
    """'With 24 GiB on the GPU and 64 GiB of host RAM': the wire and `moeqos whatif --budget` agree."""
    from moeqos.planner.solver import PlanRequest, solve
    from moeqos.planner.whatif import whatif_profile

    capacities = {"cuda:0": 24 << 30, "cpu": 64 << 30}
    target = QosTarget(min_tokens_per_s=5)
    with PlannerClient(planner_address) as planner:
        outcome = planner.whatif(
            "mixtral-8x7b",
            "a100-80gb",
            target=target,
            budgets=[TierBudget(name, size) for name, size in capacities.items()],
        )
    local_profile = whatif_profile(MODELS["mixtral-8x7b"], HARDWARE["a100-80gb"], capacities)
    local = solve(PlanRequest(local_profile, target))
    assert outcome.profile.tiers == local_profile.tiers
    assert outcome.best is not None
    assert outcome.best.plan == local.plan
    gpu_budget = next(t.budget_bytes for t in local_profile.tiers if t.name == "cuda:0")
    assert gpu_budget < 24 << 30  # dense weights and the reserve come out of the GPU's memory
