"""The executor's gRPC servicer: parse, call ExecutorRuntime in a worker thread, convert.

Torch work never runs on the event loop: every runtime call goes through `_run` (a thread pool), and
a generation is driven one `next()` per token from the loop, so a cancelled call (client gone,
deadline passed) stops at the next token and sets the runtime's cancel event. Errors are raised as
moeqos.core.errors exceptions; the server's one interceptor maps them to status codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc.aio
from moeqos.api.codec import common
from moeqos.api.codec import executor as codec
from moeqos.core.errors import NotReady
from moeqos.core.plan import Plan
from moeqos.core.profile import Profile
from moeqos.core.service_types import (
    BudgetOutcome,
    Completion,
    ExecutorInfo,
    GenerationEvent,
    GenerationStats,
    ProfileProgress,
    SwitchReport,
)
from moeqos.core.tier import TierBudget
from moeqos.executor import service_measure
from moeqos.executor.qos_loop import QosLoop
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.sampling import SamplingParams
from moeqos.executor.service_admission import Admission
from moeqos.executor.service_target import StandingTarget
from moeqos.proto.common.v1 import common_pb2
from moeqos.proto.executor.v1 import executor_pb2 as ex
from moeqos.proto.executor.v1 import executor_pb2_grpc as ex_grpc

T = TypeVar("T")

_DONE = object()


class ExecutorServicer(ex_grpc.ExecutorServiceServicer):
    """The executor service over one ExecutorRuntime (attached once loaded; until then UNAVAILABLE)."""

    def __init__(
        self,
        name: str,
        pool: Executor,
        admission: Admission,
        target: StandingTarget,
        measure: service_measure.MeasureSettings,
        profile_path: Path | None = None,
        qos: QosLoop | None = None,
    ) -> None:
        self.name = name
        self.qos = qos
        """Live measurement and the closed loop (None: neither, e.g. a bare servicer in tests)."""
        self.runtime: ExecutorRuntime | None = None
        self.admission = admission
        self.target = target
        self._pool = pool
        self._measure = measure
        self._profile: Profile | None = None
        self.profile_path = profile_path
        """Where the profile is saved after each measurement and read back at the first need."""
        self._profile_lock = asyncio.Lock()

    def _ready(self) -> ExecutorRuntime:
        if self.runtime is None:
            raise NotReady("the executor is still loading its model")
        return self.runtime

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ----- hooks for the standing target -------------------------------------------------------
    async def cached_profile(self) -> Profile:
        """The profile, measured (with reference perplexities) on first use and cached, its `tiers`
        refreshed to the current budgets (they may have changed since it was measured)."""
        async with self._profile_lock:
            if self._profile is None:
                runtime = self._ready()
                profile = service_measure.load_saved(self.profile_path, runtime)
                if profile is None:
                    profile = await self._run(service_measure.measure, runtime, self._measure, True, _quiet)
                    service_measure.save(self.profile_path, profile)
                self._profile = profile
            return dataclasses.replace(self._profile, tiers=self.budgets())

    async def warm_profile(self, measure: bool) -> None:
        """Before health turns SERVING: read the saved profile if there is one, and with `measure`
        measure it when there is none, so a first Plan or Deploy does not wait behind a healthy status."""
        if measure:
            await self.cached_profile()
            return
        async with self._profile_lock:
            if self._profile is None:
                self._profile = service_measure.load_saved(self.profile_path, self._ready())

    async def planning_profile(self) -> Profile:
        """The profile plans are made from: the cached one under the live calibration (loop on)."""
        profile = await self.cached_profile()
        return self.qos.calibrated(profile) if self.qos is not None else profile

    @property
    def measured_profile(self) -> Profile | None:
        """The profile as measured, once cached (None before)."""
        return self._profile

    def budgets(self) -> tuple[TierBudget, ...]:
        return tuple(TierBudget(name, budget) for name, budget in self._ready().budgets.items())

    async def apply(self, plan: Plan) -> SwitchReport:
        switch = await self._run(self._ready().apply_plan, plan)
        return switch.report

    def _plan(self, message: common_pb2.Plan) -> Plan:
        """The request's plan, given by its assignments or its spec alone (read for the served model)."""
        runtime = self._ready()
        return common.plan_from_proto(message, runtime.model, runtime.default_tier)

    # ----- state -------------------------------------------------------------------------------
    async def GetInfo(
        self, request: ex.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> ex.GetInfoResponse:
        runtime = self._ready()
        info = ExecutorInfo(
            name=self.name,
            model=runtime.model,
            hardware=runtime.hardware,
            tiers=tuple(runtime.tier_status()),
            plan=runtime.plan,
            plan_applied_at=datetime.fromtimestamp(runtime.plan_applied_at, UTC),
            standing_target=self.target.target,
            planner_address=self.target.planner_address,
            active_generations=self.admission.active,
            queued_generations=self.admission.waiting,
            profile_cached=self._profile is not None,
            replan_state=self.target.state,
            replan_detail=self.target.detail,
            qos=self.qos.status(self._profile) if self.qos is not None else None,
        )
        return codec.info_to_proto(info)

    async def GetProfile(
        self, request: ex.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> ex.GetProfileResponse:
        profile = await self.planning_profile()
        calibration = self.qos.planned_with if self.qos is not None and self.qos.settings.enabled else None
        return codec.profile_response_to_proto(profile, calibration)

    async def MeasureProfile(
        self, request: ex.MeasureProfileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ex.MeasureProfileResponse]:
        runtime = self._ready()
        settings = self._measure_settings(request)

        def job(progress: service_measure.Progress) -> Awaitable[Profile]:
            return self._run(service_measure.measure, runtime, settings, request.measure_quality, progress)

        async for event in service_measure.with_progress(job):
            if isinstance(event, Profile):
                yield codec.measure_event_to_proto(await self._replace_profile(event))
            else:
                stage, fraction = event
                yield codec.measure_event_to_proto(ProfileProgress(stage, round(fraction * 100), 100))

    async def _replace_profile(self, fresh: Profile) -> Profile:
        """Cache and save a re-measured profile, keeping earlier perplexities if it measured none."""
        async with self._profile_lock:
            previous = self._profile or service_measure.load_saved(self.profile_path, self._ready())
            self._profile = service_measure.keep_quality(fresh, previous)
            service_measure.save(self.profile_path, self._profile)
            return self._profile

    def _measure_settings(self, request: ex.MeasureProfileRequest) -> service_measure.MeasureSettings:
        base = self._measure
        return service_measure.MeasureSettings(
            corpus=service_measure.wire_corpus(request.corpus or base.corpus),
            tokens=request.tokens or base.tokens,
            quality_corpus=base.quality_corpus,
            quality_tokens=base.quality_tokens,
            quality_precisions=base.quality_precisions,
            repeats=base.repeats,
        )

    # ----- plans, budgets, targets -------------------------------------------------------------
    async def ApplyPlan(
        self, request: ex.ApplyPlanRequest, context: grpc.aio.ServicerContext
    ) -> ex.ApplyPlanResponse:
        report = await self.apply(self._plan(request.plan))
        return ex.ApplyPlanResponse(
            report=common.switch_to_proto(report), plan=common.plan_to_proto(self._ready().plan)
        )

    async def SetBudget(
        self, request: ex.SetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> ex.SetBudgetResponse:
        runtime = self._ready()
        fits = runtime.set_budget(common.tier_from_proto(request.tier), int(request.budget_bytes))
        started = self.target.replan()
        return codec.budget_outcome_to_proto(BudgetOutcome(fits, started, tuple(runtime.tier_status())))

    async def SetTarget(
        self, request: ex.SetTargetRequest, context: grpc.aio.ServicerContext
    ) -> ex.SetTargetResponse:
        target = common.target_from_proto(request.target) if request.HasField("target") else None
        self.target.set(target, request.planner_address)
        return ex.SetTargetResponse()

    # ----- generation and evaluation -----------------------------------------------------------
    async def _generate(self, request: ex.GenerateRequest) -> AsyncIterator[GenerationEvent]:
        """The runtime's events; the last carries stats. Holds an admission slot throughout."""
        runtime = self._ready()
        params = SamplingParams.of(codec.sampling_from_proto(request.sampling))
        async with self.admission.slot():
            cancel = threading.Event()
            try:
                on_step = self.qos.stats.stream() if self.qos is not None else None
                events: Iterator[GenerationEvent] = await self._run(
                    runtime.generate, request.prompt, params, cancel, on_step
                )
                while (event := await self._run(next, events, _DONE)) is not _DONE:
                    yield event
            finally:
                cancel.set()  # the client went away or the deadline passed: stop at the next token

    async def Generate(
        self, request: ex.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ex.GenerateResponse]:
        async for event in self._generate(request):
            yield codec.event_to_proto(event)

    async def Complete(
        self, request: ex.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> ex.CompleteResponse:
        parts: list[str] = []
        stats: GenerationStats | None = None
        async for event in self._generate(request):
            parts.append(event.text)
            stats = event.stats or stats
        assert stats is not None, "a generation ends with an event that carries its stats"
        return codec.completion_to_proto(Completion("".join(parts), stats))

    async def Evaluate(
        self, request: ex.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> ex.EvaluateResponse:
        runtime = self._ready()
        plan = self._plan(request.plan) if request.HasField("plan") else None
        corpus = service_measure.wire_corpus(request.corpus or self._measure.quality_corpus)
        tokens = request.max_tokens or self._measure.quality_tokens
        evaluation = await self._run(service_measure.evaluate, runtime, corpus, tokens, plan)
        return codec.evaluation_to_proto(evaluation)


def _quiet(stage: str, fraction: float) -> None:
    """Progress sink for measurements nobody watches."""
