"""Clients of the planner service: `PlannerClient` (blocking) and `AsyncPlannerClient` (asyncio).

Both return moeqos.core.service_types dataclasses and moeqos domain types (converted by moeqos.api.codec),
and raise moeqos.core.errors exceptions (an unreachable target raises InfeasibleTarget with `.closest`
filled in).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moeqos.api.channel import ConnectOptions
from moeqos.api.codec import common
from moeqos.api.codec import planner as codec
from moeqos.client.base import DEFAULT_DEADLINE, AsyncBase, SyncBase
from moeqos.core.descriptions import HardwareDescription, ModelDescription
from moeqos.core.errors import InvalidArgument
from moeqos.core.profile import Profile
from moeqos.core.qos import QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.service_types import DeployOutcome, DeploySpec, PlanOutcome, WhatIfOutcome
from moeqos.core.tier import TierBudget
from moeqos.proto.planner.v1 import planner_pb2 as pl
from moeqos.proto.planner.v1 import planner_pb2_grpc as pl_grpc


def source(profile: Profile | None, executor: str | None) -> pl.ProfileSource:
    """Exactly one of an inline profile or an executor address to fetch it from."""
    if (profile is None) == (executor is None):
        raise InvalidArgument("give exactly one of a profile or an executor address")
    if profile is not None:
        return pl.ProfileSource(profile=common.profile_to_proto(profile))
    return pl.ProfileSource(executor_address=executor)


def plan_request(
    target: QosTarget,
    profile: Profile | None,
    executor: str | None,
    budgets: Sequence[TierBudget],
    pins: Sequence[PlacementRule],
    concurrency: int = 1,
) -> pl.PlanRequest:
    return pl.PlanRequest(
        source=source(profile, executor),
        target=common.target_to_proto(target),
        budgets=[common.budget_to_proto(b) for b in budgets],
        pins=[common.pin_to_proto(p) for p in pins],
        concurrency=concurrency,
    )


def frontier_request(
    profile: Profile | None,
    executor: str | None,
    budgets: Sequence[TierBudget],
    pins: Sequence[PlacementRule],
    points: int,
) -> pl.FrontierRequest:
    return pl.FrontierRequest(
        source=source(profile, executor),
        budgets=[common.budget_to_proto(b) for b in budgets],
        pins=[common.pin_to_proto(p) for p in pins],
        points=points,
    )


def whatif_request(
    model: str | ModelDescription,
    hardware: str | HardwareDescription,
    target: QosTarget | None,
    budgets: Sequence[TierBudget],
    frontier_points: int,
) -> pl.WhatIfRequest:
    request = pl.WhatIfRequest(
        budgets=[common.budget_to_proto(b) for b in budgets], frontier_points=frontier_points
    )
    if isinstance(model, str):
        request.model_name = model
    else:
        request.model_description.CopyFrom(codec.model_to_proto(model))
    if isinstance(hardware, str):
        request.hardware_name = hardware
    else:
        request.hardware_description.CopyFrom(codec.hardware_to_proto(hardware))
    if target is not None:
        request.target.CopyFrom(common.target_to_proto(target))
    return request


def deploy_request(specs: Sequence[DeploySpec], planner_address: str) -> pl.DeployRequest:
    targets = [codec.deploy_spec_to_proto(s) for s in specs]
    return pl.DeployRequest(targets=targets, planner_address=planner_address)


class PlannerClient(SyncBase):
    """Blocking client of a planner (`host:port`). Torch-free."""

    def __init__(self, address: str, options: ConnectOptions | None = None) -> None:
        super().__init__(address, options)
        self._stub = pl_grpc.PlannerServiceStub(self._channel)

    def plan(
        self,
        target: QosTarget,
        *,
        profile: Profile | None = None,
        executor: str | None = None,
        budgets: Sequence[TierBudget] = (),
        pins: Sequence[PlacementRule] = (),
        timeout: Any = DEFAULT_DEADLINE,
        concurrency: int = 1,
    ) -> PlanOutcome:
        """The best plan for `target` from a profile, or from the profile of the executor at `executor`;
        tokens/s (the floor and the prediction) per stream at `concurrency` streams decoded together."""
        request = plan_request(target, profile, executor, budgets, pins, concurrency)
        return codec.outcome_from_proto(self._unary(self._stub.Plan, request, timeout))

    def frontier(
        self,
        *,
        profile: Profile | None = None,
        executor: str | None = None,
        budgets: Sequence[TierBudget] = (),
        pins: Sequence[PlacementRule] = (),
        points: int = 0,
        timeout: Any = DEFAULT_DEADLINE,
    ) -> list[PlanOutcome]:
        """Pareto-optimal plans along the speed/quality trade-off, slowest (most accurate) first."""
        request = frontier_request(profile, executor, budgets, pins, points)
        reply = self._unary(self._stub.Frontier, request, timeout)
        return [codec.outcome_from_proto(p) for p in reply.points]

    def whatif(
        self,
        model: str | ModelDescription,
        hardware: str | HardwareDescription,
        *,
        target: QosTarget | None = None,
        budgets: Sequence[TierBudget] = (),
        frontier_points: int = 0,
        timeout: Any = DEFAULT_DEADLINE,
    ) -> WhatIfOutcome:
        """Plan for a built-in or described model on a built-in or described machine, no executor needed."""
        request = whatif_request(model, hardware, target, budgets, frontier_points)
        return codec.whatif_from_proto(self._unary(self._stub.WhatIf, request, timeout))

    def deploy(
        self, specs: Sequence[DeploySpec], planner_address: str = "", timeout: float | None = None
    ) -> list[DeployOutcome]:
        """Plan for and apply to each executor; the executors keep their targets as standing targets."""
        reply = self._unary(self._stub.Deploy, deploy_request(specs, planner_address), timeout)
        return [codec.deploy_outcome_from_proto(r) for r in reply.results]


class AsyncPlannerClient(AsyncBase):
    """asyncio client of a planner; the same calls as PlannerClient, awaited."""

    def __init__(self, address: str, options: ConnectOptions | None = None) -> None:
        super().__init__(address, options)
        self._stub = pl_grpc.PlannerServiceStub(self._channel)

    async def plan(
        self,
        target: QosTarget,
        *,
        profile: Profile | None = None,
        executor: str | None = None,
        budgets: Sequence[TierBudget] = (),
        pins: Sequence[PlacementRule] = (),
        timeout: Any = DEFAULT_DEADLINE,
        concurrency: int = 1,
    ) -> PlanOutcome:
        """The best plan for `target` from a profile, or from the profile of the executor at `executor`;
        tokens/s (the floor and the prediction) per stream at `concurrency` streams decoded together."""
        request = plan_request(target, profile, executor, budgets, pins, concurrency)
        return codec.outcome_from_proto(await self._unary(self._stub.Plan, request, timeout))

    async def frontier(
        self,
        *,
        profile: Profile | None = None,
        executor: str | None = None,
        budgets: Sequence[TierBudget] = (),
        pins: Sequence[PlacementRule] = (),
        points: int = 0,
        timeout: Any = DEFAULT_DEADLINE,
    ) -> list[PlanOutcome]:
        """Pareto-optimal plans along the speed/quality trade-off, slowest (most accurate) first."""
        request = frontier_request(profile, executor, budgets, pins, points)
        reply = await self._unary(self._stub.Frontier, request, timeout)
        return [codec.outcome_from_proto(p) for p in reply.points]

    async def whatif(
        self,
        model: str | ModelDescription,
        hardware: str | HardwareDescription,
        *,
        target: QosTarget | None = None,
        budgets: Sequence[TierBudget] = (),
        frontier_points: int = 0,
        timeout: Any = DEFAULT_DEADLINE,
    ) -> WhatIfOutcome:
        """Plan for a built-in or described model on a built-in or described machine, no executor needed."""
        request = whatif_request(model, hardware, target, budgets, frontier_points)
        return codec.whatif_from_proto(await self._unary(self._stub.WhatIf, request, timeout))

    async def deploy(
        self, specs: Sequence[DeploySpec], planner_address: str = "", timeout: float | None = None
    ) -> list[DeployOutcome]:
        """Plan for and apply to each executor; the executors keep their targets as standing targets."""
        reply = await self._unary(self._stub.Deploy, deploy_request(specs, planner_address), timeout)
        return [codec.deploy_outcome_from_proto(r) for r in reply.results]
