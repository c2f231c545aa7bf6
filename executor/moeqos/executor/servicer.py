"""The executor's gRPC servicer: parse, call ExecutorRuntime in a worker thread, convert.

Torch work never runs on the event loop: every runtime call goes through `ServedModel.run` (a thread
pool), and
a generation is driven one `next()` per token from the loop, so a cancelled call (client gone,
deadline passed) stops at the next token and sets the runtime's cancel event. Errors are raised as
moeqos.core.errors exceptions; the server's one interceptor maps them to status codes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import UTC, datetime

import grpc.aio
from moeqos.api import convert, wire
from moeqos.core.profile import Profile as Measured  # the RPC `Profile` below would shadow the name
from moeqos.core.service_types import GenerationStats
from moeqos.executor import service_measure
from moeqos.executor.generation import GenerationEvent
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.sampling import SamplingParams
from moeqos.executor.service_admission import Admission
from moeqos.executor.service_model import ServedModel
from moeqos.executor.service_target import StandingTarget
from moeqos.proto.executor.v1 import executor_pb2 as ex
from moeqos.proto.executor.v1 import executor_pb2_grpc as ex_grpc

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

    def __init__(self, name: str, served: ServedModel, admission: Admission, target: StandingTarget) -> None:
        self.name = name
        self.served = served
        self.admission = admission
        self.target = target

    @property
    def runtime(self) -> ExecutorRuntime | None:
        """The runtime served (None while the model loads)."""
        return self.served.runtime

    # ----- state -------------------------------------------------------------------------------
    async def GetInfo(
        self, request: ex.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> ex.GetInfoResponse:
        runtime = self.served.ready()
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
            profile_cached=self.served.profile_cached,
            replan_state=self.target.state,
        )
        if self.target.target is not None:
            response.standing_target.CopyFrom(wire.target_to_proto(self.target.target))
        return response

    async def GetProfile(
        self, request: ex.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> ex.GetProfileResponse:
        return ex.GetProfileResponse(profile=wire.profile_to_proto(await self.served.cached_profile()))

    async def Profile(
        self, request: ex.ProfileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ex.ProfileEvent]:
        runtime = self.served.ready()
        settings = self._measure_settings(request)

        def job(progress: service_measure.Progress) -> Awaitable[Measured]:
            return self.served.run(
                service_measure.measure, runtime, settings, request.measure_quality, progress
            )

        async for event in service_measure.with_progress(job):
            if isinstance(event, Measured):
                yield ex.ProfileEvent(profile=wire.profile_to_proto(await self.served.replace_profile(event)))
            else:
                done = ex.ProfileProgress(stage=event[0], done=round(event[1] * 100), total=100)
                yield ex.ProfileEvent(progress=done)

    def _measure_settings(self, request: ex.ProfileRequest) -> service_measure.MeasureSettings:
        base = self.served.measure
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
        self.served.ready()
        report = await self.served.apply(wire.plan_from_proto(request.plan))
        return ex.ApplyPlanResponse(
            report=convert.switch_to_proto(report), plan=wire.plan_to_proto(self.served.ready().plan)
        )

    async def SetBudget(
        self, request: ex.SetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> ex.SetBudgetResponse:
        runtime = self.served.ready()
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
        runtime = self.served.ready()
        params = sampling_params(request.sampling)
        async with self.admission.slot():
            cancel, started = threading.Event(), time.perf_counter()
            try:
                events: Iterator[GenerationEvent] = await self.served.run(
                    runtime.generate, request.prompt, params, cancel
                )
                while (event := await self.served.run(next, events, _DONE)) is not _DONE:
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
        runtime = self.served.ready()
        plan = wire.plan_from_proto(request.plan) if request.HasField("plan") else None
        corpus = service_measure.wire_corpus(request.corpus or self.served.measure.quality_corpus)
        tokens = request.max_tokens or self.served.measure.quality_tokens
        result = await self.served.run(service_measure.evaluate, runtime, corpus, tokens, plan)
        return ex.EvaluateResponse(
            perplexity=result.perplexity,
            tokens_per_s=result.tokens_per_s,
            tokens=result.tokens_scored,
            plan_spec=(plan or runtime.plan).to_spec(),
            corpus=corpus,
        )
