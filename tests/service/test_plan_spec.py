"""Plans given by their text form through a real executor: a Plan message carrying only `spec` is
accepted wherever a plan is (ApplyPlan, Evaluate), so the closest plan of a FAILED_PRECONDITION trailer
can be sent straight back; assignments and a spec that disagree are INVALID_ARGUMENT and change nothing."""

from __future__ import annotations

import json

import grpc
import pytest
from moeqos.api.grpc_errors import CLOSEST_KEY
from moeqos.client import ExecutorClient, PlannerClient
from moeqos.core.errors import InfeasibleTarget
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.qos import QosTarget
from moeqos.proto.common.v1 import common_pb2
from moeqos.proto.executor.v1 import executor_pb2, executor_pb2_grpc
from moeqos.proto.planner.v1 import planner_pb2, planner_pb2_grpc

from tests.service.service_harness import address

MIXED = "bf16@cpu,L1.E2-3=int8@cpu"


@pytest.fixture
def own_executor(stack):
    """A fresh executor of its own (these tests switch its plan)."""
    handle = stack.executor(tier_budgets={"cpu": 1 << 20, "disk": 0})
    return address(handle.port)


def _stub(target: str) -> executor_pb2_grpc.ExecutorServiceStub:
    return executor_pb2_grpc.ExecutorServiceStub(grpc.insecure_channel(target))


def test_apply_plan_by_spec_alone(own_executor):
    with ExecutorClient(own_executor) as client:
        before = client.info().plan
    reply = _stub(own_executor).ApplyPlan(
        executor_pb2.ApplyPlanRequest(plan=common_pb2.Plan(spec=MIXED)), timeout=60
    )
    with ExecutorClient(own_executor) as client:
        served = client.info().plan
    assert served.to_spec() == MIXED and reply.plan.spec == MIXED
    assert served[1, 2].precision == Precision.INT8 and served[0, 0].precision == Precision.BF16
    assert reply.report.experts_changed == len(served.changed_experts(before)) > 0


def test_a_bare_precision_takes_the_executor_device(own_executor):
    _stub(own_executor).ApplyPlan(
        executor_pb2.ApplyPlanRequest(plan=common_pb2.Plan(spec="int8")), timeout=60
    )
    with ExecutorClient(own_executor) as client:
        assert client.info().plan == Plan.uniform(2, 4, Precision.INT8, "cpu")


def test_evaluate_a_plan_by_spec_alone(own_executor):
    request = executor_pb2.EvaluateRequest(
        corpus="ptb:valid", max_tokens=64, plan=common_pb2.Plan(spec=MIXED)
    )
    reply = _stub(own_executor).Evaluate(request, timeout=120)
    assert reply.plan_spec == MIXED and reply.perplexity > 1 and reply.tokens > 0 and reply.seconds > 0


@pytest.mark.parametrize(
    "plan",
    [
        # the assignments of one plan beside the spec of another
        common_pb2.Plan(
            num_layers=2,
            num_experts=4,
            assignments=[common_pb2.Assignment(precision=common_pb2.PRECISION_INT8, tier="cpu")] * 8,
            spec="bf16@cpu",
        ),
        common_pb2.Plan(num_layers=3, num_experts=4, spec="int8@cpu"),  # another shape than the model's
        common_pb2.Plan(spec="int4@gpu7"),
    ],
    ids=["disagree", "wrong-shape", "bad-tier"],
)
def test_bad_plans_by_spec_are_invalid_argument_and_change_nothing(own_executor, plan):
    with ExecutorClient(own_executor) as client:
        before = client.info()
    for call, request in (
        ("ApplyPlan", executor_pb2.ApplyPlanRequest(plan=plan)),
        ("Evaluate", executor_pb2.EvaluateRequest(corpus="ptb:valid", max_tokens=64, plan=plan)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            getattr(_stub(own_executor), call)(request, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (call, caught.value.details())
    with ExecutorClient(own_executor) as client:
        after = client.info()
    assert after.plan == before.plan and after.plan_applied_at == before.plan_applied_at


def test_the_closest_plan_of_an_infeasible_target_can_be_sent_straight_back(own_executor, planner_address):
    planner = grpc.insecure_channel(planner_address)
    request = planner_pb2.PlanRequest(
        source=planner_pb2.ProfileSource(executor_address=own_executor),
        target=common_pb2.QosTarget(min_tokens_per_s=1e12),
    )
    with pytest.raises(grpc.RpcError) as caught:
        planner_pb2_grpc.PlannerServiceStub(planner).Plan(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    trailer = dict(caught.value.trailing_metadata())[CLOSEST_KEY]
    closest = json.loads(trailer)["plan_spec"]
    _stub(own_executor).ApplyPlan(
        executor_pb2.ApplyPlanRequest(plan=common_pb2.Plan(spec=closest)), timeout=60
    )
    with ExecutorClient(own_executor) as client, PlannerClient(planner_address) as typed:
        assert client.info().plan.to_spec() == closest
        # the typed client's InfeasibleTarget carries the same plan text
        with pytest.raises(InfeasibleTarget) as infeasible:
            typed.plan(QosTarget(min_tokens_per_s=1e12), executor=own_executor)
    assert infeasible.value.closest["plan_spec"] == closest
