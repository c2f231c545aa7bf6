"""The executor's gRPC servicer: parse, call ExecutorRuntime in a worker thread, convert.

Torch work never runs on the event loop: every runtime call goes through `ServedModel.run` (a thread pool), and
a generation is driven one `next()` per token from the loop, so a cancelled call (client gone,
deadline passed) stops at the next token and sets the runtime's cancel event. Errors are raised as
moeqos.core.errors exceptions; the server's one interceptor maps them to status codes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc.aio
from moeqos.api.codec import common
from moeqos.api.codec import executor as codec
from moeqos.core.addresses import check_address
from moeqos.core.errors import InvalidArgument, MoeqosError
from moeqos.core.plan import Plan
from moeqos.core.profile import Profile
from moeqos.core.service_types import (
    BudgetOutcome,
    Completion,
    ExecutorInfo,
    GenerationEvent,
    GenerationStats,
    ProfileProgress,
)
from moeqos.executor import service_measure
from moeqos.executor.qos_loop import QosLoop
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.sampling import SamplingParams
from moeqos.executor.service_admission import Admission
from moeqos.executor.service_model import ServedModel
from moeqos.executor.service_target import StandingTarget
from moeqos.executor.state_store import ExecutorState, load_state, save_state
from moeqos.executor.stream_watch import WriteWatch
from moeqos.proto.common.v1 import common_pb2
from moeqos.proto.executor.v1 import executor_pb2 as ex
from moeqos.proto.executor.v1 import executor_pb2_grpc as ex_grpc

log = logging.getLogger(__name__)

_DONE = object()


def start_generation(
    runtime: ExecutorRuntime,
    request: ex.GenerateRequest,
    params: SamplingParams,
    cancel: threading.Event,
    on_step: Callable[[int, float], None] | None = None,
) -> Iterator[GenerationEvent]:
    """The runtime's generation for the request's prompt, or its conversation rendered with the chat
    template (blocking: the template and the tokenizer run here, in the worker thread). `on_step`
    hears each token's step time (the QoS loop's live measurement)."""
    if request.messages and request.prompt:
        raise InvalidArgument("give a prompt or messages, not both")
    if not request.messages:
        return runtime.generate(request.prompt, params, cancel, on_step)
    conversation = [codec.chat_message_from_proto(m) for m in request.messages]
    ids = runtime.encode_chat([(m.role, m.content) for m in conversation])
    return runtime.generate(ids, params, cancel, on_step)


class ExecutorServicer(ex_grpc.ExecutorServiceServicer):
    """The executor service over one ExecutorRuntime (attached once loaded; until then UNAVAILABLE)."""

    def __init__(
        self,
        name: str,
        served: ServedModel,
        admission: Admission,
        target: StandingTarget,
        write_window_s: float = 30.0,
        state_path: Path | None = None,
        qos: QosLoop | None = None,
        variants_ahead: Callable[[], str] = lambda: "",
    ) -> None:
        """`variants_ahead()`: what is built ahead, for GetInfo (moeqos.executor.variant_warmup)."""
        self.name = name
        self.variants_ahead = variants_ahead
        self.served = served
        self.qos = qos
        """Live measurement and the closed loop (None: neither, e.g. a bare servicer in tests)."""
        self.admission = admission
        self.target = target
        self.write_window_s = write_window_s
        """How long a stream's message may stay unread before the stream is cancelled."""
        self.state_path = state_path
        """Where the plan, budgets and standing target are saved after each change (None: nowhere)."""
        served.on_switch = self._persist  # every switch, a re-plan's included

    @property
    def runtime(self) -> ExecutorRuntime | None:
        """The runtime served (None while the model loads)."""
        return self.served.runtime

    def _plan(self, message: common_pb2.Plan) -> Plan:
        """The request's plan, given by its assignments or its spec alone (read for the served model)."""
        runtime = self.served.ready()
        return common.plan_from_proto(message, runtime.model, runtime.default_tier)

    # ----- state kept across restarts -----------------------------------------------------------
    def _persist(self) -> None:
        """Save the plan, budgets and standing target (moeqos.executor.state_store)."""
        if self.state_path is None or self.runtime is None:
            return
        runtime, target = self.runtime, self.target
        state = ExecutorState(
            runtime.model.fingerprint,
            runtime.plan,
            dict(runtime.budgets),
            target.target,
            target.planner_address,
            target.pins,
        )
        save_state(self.state_path, state)

    async def restore(self) -> None:
        """Put back the state saved before a restart, if any was saved for this model. A saved plan
        that no longer fits (another device, budgets) is skipped with a warning."""
        runtime = self.served.ready()
        state = None if self.state_path is None else load_state(self.state_path, runtime.model.fingerprint)
        if state is None:
            return
        for tier, budget in state.budgets.items():
            if tier in runtime.budgets:
                runtime.set_budget(tier, budget)
        try:
            await self.served.apply(state.plan)
        except MoeqosError as exc:
            log.warning("the saved plan was not restored: %s", exc)
        self.target.set(state.target, state.planner_address, state.pins)
        self._persist()

    # ----- state -------------------------------------------------------------------------------
    async def GetInfo(
        self, request: ex.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> ex.GetInfoResponse:
        runtime = self.served.ready()
        integrity = runtime.factory.integrity.status()
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
            profile_cached=self.served.profile_cached,
            replan_state=self.target.state,
            replan_detail=self.target.detail,
            damaged_files=integrity.damaged,
            integrity=integrity.describe(),
            standing_pins=self.target.pins,
            target_generation=self.target.generation,
            qos=self.qos.status(self.served.measured_profile) if self.qos is not None else None,
            max_batch_size=runtime.scheduler.limits.max_batch,
            max_queued_generations=self.admission.max_queued,
            max_tokens_in_flight=runtime.scheduler.limits.max_tokens,
            tokens_in_flight=runtime.scheduler.tokens_in_flight,
            dense=runtime.dense_status(),
            variants_ahead=self.variants_ahead(),
            last_switch=self.served.last_switch,
        )
        return codec.info_to_proto(info)

    async def GetProfile(
        self, request: ex.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> ex.GetProfileResponse:
        profile = await self.served.cached_profile()
        if self.qos is None or not self.qos.settings.enabled:
            return codec.profile_response_to_proto(profile, None)
        return codec.profile_response_to_proto(self.qos.calibrated(profile), self.qos.planned_with)

    async def MeasureProfile(
        self, request: ex.MeasureProfileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ex.MeasureProfileResponse]:
        runtime = self.served.ready()
        settings = self._measure_settings(request)

        def job(progress: service_measure.Progress) -> Awaitable[Profile]:
            return self.served.decode(
                service_measure.measure, runtime, settings, request.measure_quality, progress
            )

        async for event in service_measure.with_progress(job):
            if isinstance(event, Profile):
                yield codec.measure_event_to_proto(await self.served.replace_profile(event))
            else:
                stage, fraction = event
                yield codec.measure_event_to_proto(ProfileProgress(stage, round(fraction * 100), 100))

    def _measure_settings(self, request: ex.MeasureProfileRequest) -> service_measure.MeasureSettings:
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
        plan = self._plan(request.plan)
        self.served.ready().validate_plan(plan)  # a rejected plan changes nothing, a re-plan included
        self.target.supersede()  # an explicit plan is newer than any re-plan in progress
        report = await self.served.apply(plan)
        return ex.ApplyPlanResponse(
            report=common.switch_to_proto(report), plan=common.plan_to_proto(self.served.ready().plan)
        )

    async def SetBudget(
        self, request: ex.SetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> ex.SetBudgetResponse:
        runtime = self.served.ready()
        fits = runtime.set_budget(common.tier_from_proto(request.tier), int(request.budget_bytes))
        started = self.target.replan()
        self._persist()
        return codec.budget_outcome_to_proto(BudgetOutcome(fits, started, tuple(runtime.tier_status())))

    async def SetTarget(
        self, request: ex.SetTargetRequest, context: grpc.aio.ServicerContext
    ) -> ex.SetTargetResponse:
        target = common.target_from_proto(request.target) if request.HasField("target") else None
        if request.planner_address:
            check_address(request.planner_address, "planner_address")
        self.target.set(target, request.planner_address, common.pins_from_proto(request.pins))
        self._persist()
        return ex.SetTargetResponse()

    # ----- generation and evaluation -----------------------------------------------------------
    async def _generate(self, request: ex.GenerateRequest) -> AsyncIterator[GenerationEvent]:
        """The runtime's events; the last carries stats. Holds an admission slot throughout, handed
        back early when the reader leaves a message unread past the write window (stream_watch)."""
        runtime = self.served.ready()
        params = SamplingParams.of(codec.sampling_from_proto(request.sampling))
        async with self.admission.slot() as held:
            cancel = threading.Event()

            def stalled() -> None:  # the reader stopped reading: this handler will not be resumed
                cancel.set()
                held.release()

            watch = WriteWatch(self.write_window_s, stalled)
            finished = False
            try:
                on_step = self.qos.stats.stream() if self.qos is not None else None
                events: Iterator[GenerationEvent] = await self.served.decode(
                    start_generation, runtime, request, params, cancel, on_step
                )
                while (event := await self.served.decode(next, events, _DONE)) is not _DONE:
                    if event.stats is not None:
                        finished = True
                        self.served.metrics.generation(event.stats)
                    watch.writing()
                    yield event
                    watch.written()
            finally:
                watch.written()
                cancel.set()  # the client went away or the deadline passed: stop at the next token
                if not finished:  # free its place in the batch now, not at the next step
                    self.served.run_soon(runtime.scheduler.tidy)

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
        runtime = self.served.ready()
        plan = self._plan(request.plan) if request.HasField("plan") else None
        corpus = service_measure.wire_corpus(request.corpus or self.served.measure.quality_corpus)
        tokens = request.max_tokens or self.served.measure.quality_tokens
        async with self.admission.slot():  # an evaluation computes like a generation: it queues like one
            evaluation = await self.served.run(service_measure.evaluate, runtime, corpus, tokens, plan)
        return codec.evaluation_to_proto(evaluation)
