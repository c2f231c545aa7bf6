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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc.aio
from moeqos.api import convert, wire
from moeqos.core.errors import NotReady
from moeqos.core.plan import Plan
from moeqos.core.profile import Profile as Measured  # the RPC `Profile` below would shadow the name
from moeqos.core.service_types import GenerationStats, SwitchReport
from moeqos.core.tier import TierBudget
from moeqos.executor import service_measure
from moeqos.executor.generation import GenerationEvent
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.sampling import SamplingParams
from moeqos.executor.service_admission import Admission
from moeqos.executor.service_target import StandingTarget
from moeqos.proto.executor.v1 import executor_pb2 as ex
from moeqos.proto.executor.v1 import executor_pb2_grpc as ex_grpc

T = TypeVar("T")

_DONE = object()


def sampling_params(message: ex.SamplingParams) -> SamplingParams:
    """Runtime sampling parameters (the runtime validates the values against the model)."""
    return SamplingParams(
        max_tokens=message.max_tokens,
        temperature=message.temperature,
        top_p=message.top_p if message.HasField("top_p") else 1.0,
        top_k=message.top_k,
        seed=message.seed if message.HasField("seed") else None,
        stop=tuple(message.stop),
    )


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
    ) -> None:
        self.name = name
        self.runtime: ExecutorRuntime | None = None
        self.admission = admission
        self.target = target
        self._pool = pool
        self._measure = measure
        self._profile: Measured | None = None
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
    async def cached_profile(self) -> Measured:
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

    def budgets(self) -> tuple[TierBudget, ...]:
        return tuple(TierBudget(name, budget) for name, budget in self._ready().budgets.items())

    async def apply(self, plan: Plan) -> SwitchReport:
        report = await self._run(self._ready().apply_plan, plan)
        return SwitchReport(report.changed_experts, report.seconds)

    # ----- state -------------------------------------------------------------------------------
    async def GetInfo(
        self, request: ex.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> ex.GetInfoResponse:
        runtime = self._ready()
        response = ex.GetInfoResponse(
            name=self.name,
            model=wire.model_to_proto(runtime.model),
            hardware=wire.hardware_to_proto(runtime.hardware),
            tiers=[wire.tier_status_to_proto(s) for s in runtime.tier_status()],
            plan=wire.plan_to_proto(runtime.plan),
            plan_applied_at=convert.timestamp(datetime.fromtimestamp(runtime.plan_applied_at, UTC)),
            planner_address=self.target.planner_address,
            active_generations=self.admission.active,
            queued_generations=self.admission.waiting,
            profile_cached=self._profile is not None,
            replan_state=self.target.state,
        )
        if self.target.target is not None:
            response.standing_target.CopyFrom(wire.target_to_proto(self.target.target))
        return response

    async def GetProfile(
        self, request: ex.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> ex.GetProfileResponse:
        return ex.GetProfileResponse(profile=wire.profile_to_proto(await self.cached_profile()))

    async def Profile(
        self, request: ex.ProfileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ex.ProfileEvent]:
        runtime = self._ready()
        settings = self._measure_settings(request)

        def job(progress: service_measure.Progress) -> Awaitable[Measured]:
            return self._run(service_measure.measure, runtime, settings, request.measure_quality, progress)

        async for event in service_measure.with_progress(job):
            if isinstance(event, Measured):
                yield ex.ProfileEvent(profile=wire.profile_to_proto(await self._replace_profile(event)))
            else:
                done = ex.ProfileProgress(stage=event[0], done=round(event[1] * 100), total=100)
                yield ex.ProfileEvent(progress=done)

    async def _replace_profile(self, fresh: Measured) -> Measured:
        """Cache and save a re-measured profile, keeping earlier perplexities if it measured none."""
        async with self._profile_lock:
            previous = self._profile or service_measure.load_saved(self.profile_path, self._ready())
            self._profile = service_measure.keep_quality(fresh, previous)
            service_measure.save(self.profile_path, self._profile)
            return self._profile

    def _measure_settings(self, request: ex.ProfileRequest) -> service_measure.MeasureSettings:
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
        self._ready()
        report = await self.apply(wire.plan_from_proto(request.plan))
        return ex.ApplyPlanResponse(
            report=convert.switch_to_proto(report), plan=wire.plan_to_proto(self._ready().plan)
        )

    async def SetBudget(
        self, request: ex.SetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> ex.SetBudgetResponse:
        runtime = self._ready()
        fits = runtime.set_budget(wire.tier_from_proto(request.tier), int(request.budget_bytes))
        started = self.target.replan()
        tiers = [wire.tier_status_to_proto(s) for s in runtime.tier_status()]
        return ex.SetBudgetResponse(plan_fits=fits, replan_started=started, tiers=tiers)

    async def SetTarget(
        self, request: ex.SetTargetRequest, context: grpc.aio.ServicerContext
    ) -> ex.SetTargetResponse:
        target = wire.target_from_proto(request.target) if request.HasField("target") else None
        self.target.set(target, request.planner_address)
        return ex.SetTargetResponse()

    # ----- generation and evaluation -----------------------------------------------------------
    async def _generate(self, request: ex.GenerateRequest) -> AsyncIterator[ex.GenerateResponse]:
        """One message per runtime event; the last carries stats. Holds an admission slot throughout."""
        runtime = self._ready()
        params = sampling_params(request.sampling)
        async with self.admission.slot():
            cancel, started = threading.Event(), time.perf_counter()
            try:
                events: Iterator[GenerationEvent] = await self._run(
                    runtime.generate, request.prompt, params, cancel
                )
                while (event := await self._run(next, events, _DONE)) is not _DONE:
                    yield self._message(event, started, runtime)
            finally:
                cancel.set()  # the client went away or the deadline passed: stop at the next token

    def _message(
        self, event: GenerationEvent, started: float, runtime: ExecutorRuntime
    ) -> ex.GenerateResponse:
        message = ex.GenerateResponse(text=event.text)
        if event.token_id is not None:
            message.token_id = event.token_id
        if event.stats is not None:
            s = event.stats
            stats = GenerationStats(
                s.prompt_tokens,
                s.generated_tokens,
                s.time_to_first_token_s,
                s.tokens_per_s,
                time.perf_counter() - started,
                s.finish_reason,
                runtime.plan.to_spec(),
            )
            message.stats.CopyFrom(convert.stats_to_proto(stats))
        return message

    async def Generate(
        self, request: ex.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ex.GenerateResponse]:
        async for message in self._generate(request):
            yield message

    async def Complete(
        self, request: ex.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> ex.CompleteResponse:
        parts, stats = [], ex.GenerationStats()
        async for message in self._generate(request):
            parts.append(message.text)
            if message.HasField("stats"):
                stats = message.stats
        return ex.CompleteResponse(text="".join(parts), stats=stats)

    async def Evaluate(
        self, request: ex.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> ex.EvaluateResponse:
        runtime = self._ready()
        plan = wire.plan_from_proto(request.plan) if request.HasField("plan") else None
        corpus = service_measure.wire_corpus(request.corpus or self._measure.quality_corpus)
        tokens = request.max_tokens or self._measure.quality_tokens
        result = await self._run(service_measure.evaluate, runtime, corpus, tokens, plan)
        return ex.EvaluateResponse(
            perplexity=result.perplexity,
            tokens_per_s=result.tokens_per_s,
            decode_tokens=result.decode_tokens,
            tokens=result.tokens_scored,
            plan_spec=(plan or runtime.plan).to_spec(),
            corpus=corpus,
        )


def _quiet(stage: str, fraction: float) -> None:
    """Progress sink for measurements nobody watches."""
