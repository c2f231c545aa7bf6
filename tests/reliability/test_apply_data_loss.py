"""A plan switch that meets a damaged file the checkpoint cannot rebuild (issue 16, case 1) fails with
DATA_LOSS at the caller, directly (ApplyPlan) and through the planner (Deploy), not with ABORTED (which
says "try again": a retry cannot mend it), and changes nothing."""

from __future__ import annotations

import pytest
from moeqos.client import DeploySpec, ExecutorClient, PlannerClient
from moeqos.core.errors import DataLoss
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule

from tests.service.service_harness import address

LOST = "expert L1.E1 (int8): its variant file is damaged and the checkpoint cannot rebuild it"


def _lose_one_expert(runtime, monkeypatch) -> None:
    """Building L1.E1 raises what VariantFactory raises when neither file nor checkpoint can give it."""
    build = runtime.factory.build

    def lost(variant, device):
        if variant[:2] == (1, 1):
            raise DataLoss(LOST)
        return build(variant, device)

    monkeypatch.setattr(runtime.factory, "build", lost)


def test_apply_plan_reports_data_loss(stack, profile_file, monkeypatch):
    handle = stack.executor(tier_budgets={"disk": 0})
    runtime = handle.servicer.runtime
    _lose_one_expert(runtime, monkeypatch)
    with ExecutorClient(address(handle.port)) as client:
        before = client.info().plan
        target = Plan.uniform(runtime.num_layers, runtime.num_experts, Precision.INT8, "cpu")
        with pytest.raises(DataLoss, match=r"L1\.E1.*checkpoint cannot rebuild it.*previous plan is still"):
            client.apply_plan(target)
        assert client.info().plan == before


def test_deploy_reports_data_loss(stack, profile_file, monkeypatch):
    handle, planner = stack.executor(tier_budgets={"disk": 0}), stack.planner()
    _lose_one_expert(handle.servicer.runtime, monkeypatch)
    every_expert_int8 = (PlacementRule("*", Precision.INT8, "cpu"),)
    spec = DeploySpec(address(handle.port), QosTarget(objective=Objective.SPEED), pins=every_expert_int8)
    with ExecutorClient(address(handle.port)) as executor, PlannerClient(address(planner.port)) as client:
        before = executor.info()
        with pytest.raises(DataLoss, match=r"L1\.E1"):
            client.deploy([spec])
        after = executor.info()
        assert (after.plan, after.standing_target) == (before.plan, before.standing_target)
