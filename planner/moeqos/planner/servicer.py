"""The planner's gRPC servicer: parse, call the pure planner core in a worker thread, convert.

Stateless: every call carries its profile or names the executor to fetch it from. Errors are raised as
moeqos.core.errors exceptions; the server's one interceptor (moeqos.api.grpc_errors) maps them to status codes.

Calls to executors carry the planner's peer token only for a caller that presented this planner's own
token; any other caller's calls carry that caller's own bearer token, or none (the planner acts for the
caller, at the addresses the caller named, so it must not lend its credentials to an anonymous one).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc.aio
from moeqos.api.channel import ConnectOptions
from moeqos.api.codec import common
from moeqos.api.codec import planner as codec
from moeqos.api.server import bearer_token, token_matches
from moeqos.client.executor import AsyncExecutorClient
from moeqos.core.addresses import check_address
from moeqos.core.descriptions import HardwareDescription, ModelDescription
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.core.profile import Profile
from moeqos.core.service_types import (
    DeployOutcome,
    DeploySpec,
    ExecutorInfo,
    PlanOutcome,
    Prediction,
    WhatIfOutcome,
)
from moeqos.core.tier import TierBudget
from moeqos.planner.batch_model import check_concurrency
from moeqos.planner.executor_addresses import ExecutorAddresses, refuse_repeats
from moeqos.planner.frontier import DEFAULT_POINTS, frontier
from moeqos.planner.solver import PlanRequest, PlanResult, solve
from moeqos.planner.whatif import builtin_hardware, model_named, whatif_profile
from moeqos.planner.work_pool import Stop, WorkPool, checked
from moeqos.proto.planner.v1 import planner_pb2 as pl
from moeqos.proto.planner.v1 import planner_pb2_grpc as pl_grpc

T = TypeVar("T")

MAX_POINTS = 200
"""Most frontier points one request may ask for (each is a solve)."""
MAX_DEPLOY_TARGETS = 64
"""Most executors one Deploy may address."""


def outcome_of(result: PlanResult) -> PlanOutcome:
    """The service's outcome of a solver result: the plan, its predictions and the solve time."""
    prediction = Prediction(
        tokens_per_s=result.predicted_tokens_per_s,
        perplexity=result.predicted_perplexity,
        perplexity_is_estimate=result.perplexity_is_estimate,
        tier_use=dict(result.bytes_per_tier),
        notes=result.notes,
        concurrency=result.concurrency,
    )
    return PlanOutcome(result.plan, prediction, result.solve_seconds)


def _described_model(request: pl.WhatIfRequest) -> ModelDescription:
    if request.WhichOneof("model") == "model_description":
        return codec.model_from_proto(request.model_description)
    return model_named(request.model_name)


def _described_hardware(request: pl.WhatIfRequest) -> HardwareDescription:
    if request.WhichOneof("hardware") == "hardware_description":
        return codec.hardware_from_proto(request.hardware_description)
    return builtin_hardware(request.hardware_name)  # never a file path: see builtin_hardware


def _points(count: int) -> int:
    if not 2 <= count <= MAX_POINTS:
        raise OutOfRange(f"frontier points must be in [2, {MAX_POINTS}], got {count}")
    return count


class PlannerServicer(pl_grpc.PlannerServiceServicer):
    """Plan, Frontier, WhatIf and Deploy over the pure planner core."""

    def __init__(
        self,
        pool: Executor,
        peer: ConnectOptions,
        advertise_address: str,
        token: str | None,
        heavy: WorkPool,
        addresses: ExecutorAddresses,
    ) -> None:
        self._pool = pool
        self.heavy = heavy
        """Where WhatIf and Frontier run: bounded apart from Plan and Deploy, stopped when callers leave."""
        self.addresses = addresses
        """Which executor addresses callers may name."""
        self._peer = peer
        """How to reach executors (token, TLS, deadline)."""
        self._token = token
        """This planner's own token: a caller that presents it may have the peer token sent for it."""
        self.advertise_address = advertise_address
        """The address Deploy gives executors to reach this planner at (set once the port is bound)."""

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound planner work off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _caller(self, context: grpc.aio.ServicerContext) -> tuple[ConnectOptions, bool]:
        """How to reach executors for this call, and whether the caller presented this planner's token:
        the configured peer token for such a caller, else the caller's own token (or none).

        Plan and Frontier are open to anonymous callers and reach whatever address they are given, so
        the peer token goes out only for an authenticated caller: an anonymous one cannot have the
        planner send its credentials to a server of the caller's choosing."""
        presented = bearer_token(context.invocation_metadata())
        if token_matches(presented, self._token):
            return self._peer, True
        return dataclasses.replace(self._peer, token=presented), False

    async def _profile(self, source: pl.ProfileSource, context: grpc.aio.ServicerContext) -> Profile:
        kind = source.WhichOneof("source")
        if kind == "profile":
            return common.profile_from_proto(source.profile)
        if kind == "executor_address" and source.executor_address:
            peer, authenticated = self._caller(context)
            self.addresses.check(source.executor_address, authenticated)
            async with AsyncExecutorClient(source.executor_address, peer) as executor:
                return await executor.get_profile(timeout=None)
        raise InvalidArgument("source must give a profile or an executor address")

    async def Plan(self, request: pl.PlanRequest, context: grpc.aio.ServicerContext) -> pl.PlanResponse:
        plan_request = PlanRequest(
            await self._profile(request.source, context),
            common.target_from_proto(request.target),
            common.budgets_from_proto(request.budgets),
            common.pins_from_proto(request.pins),
            concurrency=check_concurrency(request.concurrency or 1),
        )
        return codec.outcome_to_response(outcome_of(await self._run(solve, plan_request)))

    async def Frontier(
        self, request: pl.FrontierRequest, context: grpc.aio.ServicerContext
    ) -> pl.FrontierResponse:
        points = _points(request.points or DEFAULT_POINTS)
        profile = await self._profile(request.source, context)
        budgets, pins = common.budgets_from_proto(request.budgets), common.pins_from_proto(request.pins)

        def job(stop: Stop) -> list[PlanResult]:
            return frontier(profile, budgets, points, pins, stop=stop)

        results = await self.heavy.run(job, context.time_remaining())
        return pl.FrontierResponse(points=[codec.outcome_to_point(outcome_of(r)) for r in results])

    async def WhatIf(self, request: pl.WhatIfRequest, context: grpc.aio.ServicerContext) -> pl.WhatIfResponse:
        capacities = {b.name: b.budget_bytes for b in common.budgets_from_proto(request.budgets)}
        model, hardware = _described_model(request), _described_hardware(request)
        target = common.target_from_proto(request.target) if request.HasField("target") else None
        points = _points(request.frontier_points) if request.frontier_points else 0

        def job(stop: Stop) -> WhatIfOutcome:
            profile = whatif_profile(model, hardware, capacities)
            checked(stop)
            best = None if target is None else solve(PlanRequest(profile, target, profile.tiers))
            front = frontier(profile, profile.tiers, points, stop=stop) if points else []
            return WhatIfOutcome(
                profile,
                None if best is None else outcome_of(best),
                tuple(outcome_of(r) for r in front),
            )

        return codec.whatif_to_proto(await self.heavy.run(job, context.time_remaining()))

    async def Deploy(self, request: pl.DeployRequest, context: grpc.aio.ServicerContext) -> pl.DeployResponse:
        specs = _deploy_specs(request)
        for spec in specs:
            self.addresses.check(spec.executor_address, authenticated=True)  # Deploy needs the token anyway
        peer, _ = self._caller(context)
        # Every plan is solved before any is applied, so a bad input or an infeasible target for one
        # executor leaves all of them untouched.
        solved = await asyncio.gather(*(self._solve_for(spec, peer) for spec in specs))
        results, before = [result for result, _ in solved], [info for _, info in solved]
        planner_address = request.planner_address or self.advertise_address
        outcomes = await asyncio.gather(
            *(
                self._apply_to(spec, result, planner_address, peer)
                for spec, result in zip(specs, results, strict=True)
            ),
            return_exceptions=True,
        )
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            # All or nothing: executors that did switch go back to the plan and target they had, so a
            # Deploy that fails on one executor has changed none (best effort: one that cannot be
            # reached keeps whatever it has).
            await asyncio.gather(
                *(self._restore(spec, info, peer) for spec, info in zip(specs, before, strict=True)),
                return_exceptions=True,
            )
            raise failures[0]
        return pl.DeployResponse(
            results=[codec.deploy_outcome_to_proto(o) for o in outcomes if isinstance(o, DeployOutcome)]
        )

    async def _solve_for(self, spec: DeploySpec, peer: ConnectOptions) -> tuple[PlanResult, ExecutorInfo]:
        """The executor's plan from its profile, within the given budgets or else its current ones, and
        what it serves now (its plan, standing target and planner: what a failed Deploy restores)."""
        async with AsyncExecutorClient(spec.executor_address, peer) as executor:
            profile = await executor.get_profile(timeout=None)
            info = await executor.info()
        budgets = spec.budgets or tuple(TierBudget(t.name, t.budget_bytes) for t in info.tiers)
        concurrency = deploy_concurrency(spec, info, profile)
        request = PlanRequest(profile, spec.target, budgets, spec.pins, concurrency=concurrency)
        return await self._run(solve, request), info

    async def _restore(self, spec: DeploySpec, info: ExecutorInfo, peer: ConnectOptions) -> None:
        """Put the executor back on `info`'s plan and standing target (a no-op switch when unchanged)."""
        async with AsyncExecutorClient(spec.executor_address, peer) as executor:
            await executor.apply_plan(info.plan, timeout=None)
            await executor.set_target(info.standing_target, info.planner_address, info.standing_pins)

    async def _apply_to(
        self, spec: DeploySpec, result: PlanResult, planner_address: str, peer: ConnectOptions
    ) -> DeployOutcome:
        """Apply the plan, then leave the executor its standing target and this planner's address."""
        async with AsyncExecutorClient(spec.executor_address, peer) as executor:
            report = await executor.apply_plan(result.plan, timeout=None)
            await executor.set_target(spec.target, planner_address, spec.pins)
        return DeployOutcome(spec.executor_address, result.plan, outcome_of(result).prediction, report)


def deploy_concurrency(spec: DeploySpec, info: ExecutorInfo, profile: Profile) -> int:
    """The streams a Deploy plans the floor per stream for: the spec's, else the executor's active
    generations, at least 1 and at most its batch size (an executor that reports none: no bound). A
    profile without batched step timings (measured by an older build) is planned for one stream unless
    the spec names a concurrency (then the solve refuses it: INVALID_ARGUMENT)."""
    if spec.concurrency:
        return check_concurrency(spec.concurrency)
    if not profile.batch_steps:
        return 1
    reported = max(1, info.active_generations)
    return min(reported, info.max_batch_size) if info.max_batch_size else reported


def _deploy_specs(request: pl.DeployRequest) -> list[DeploySpec]:
    """Every target of a Deploy, validated before any executor is contacted (the executor addresses
    themselves by `ExecutorAddresses.check` in Deploy). A malformed planner address for the executors
    to call back is refused here: an executor holding one would retry its re-plans forever."""
    if not 0 < len(request.targets) <= MAX_DEPLOY_TARGETS:
        raise InvalidArgument(f"deploy needs 1 to {MAX_DEPLOY_TARGETS} executors, got {len(request.targets)}")
    addresses = [t.executor_address for t in request.targets]
    if "" in addresses:
        raise InvalidArgument(f"executor addresses must be non-empty, got {addresses}")
    refuse_repeats(addresses)
    if request.planner_address:
        check_address(request.planner_address, "planner_address")
    specs = [codec.deploy_spec_from_proto(t) for t in request.targets]
    for spec in specs:
        if spec.concurrency:
            check_concurrency(spec.concurrency)
    return specs
