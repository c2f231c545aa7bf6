"""Clients of the executor service: `ExecutorClient` (blocking) and `AsyncExecutorClient` (asyncio).

Both return moeqos.core.service_types dataclasses and moeqos domain types (converted by moeqos.api.codec),
and raise moeqos.core.errors exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any

from moeqos.api.channel import ConnectOptions
from moeqos.api.codec import common
from moeqos.api.codec import executor as codec
from moeqos.client.base import DEFAULT_DEADLINE, AsyncBase, SyncBase
from moeqos.core.plan import Plan
from moeqos.core.profile import Profile
from moeqos.core.qos import QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.service_types import (
    BudgetOutcome,
    ChatMessage,
    Completion,
    Evaluation,
    ExecutorInfo,
    GenerationEvent,
    ProfileProgress,
    Sampling,
    SwitchReport,
)
from moeqos.proto.executor.v1 import executor_pb2 as ex
from moeqos.proto.executor.v1 import executor_pb2_grpc as ex_grpc

MeasureEvent = ProfileProgress | Profile
"""An event of a profile measurement: progress, then the finished profile."""


Prompt = str | Sequence[ChatMessage]
"""Text used as it is, or a conversation the executor renders with the model's chat template."""


def generate_request(prompt: Prompt, sampling: Sampling | None) -> ex.GenerateRequest:
    request = ex.GenerateRequest(sampling=codec.sampling_to_proto(sampling or Sampling()))
    if isinstance(prompt, str):
        request.prompt = prompt
    else:
        request.messages.extend(ex.ChatMessage(role=m.role, content=m.content) for m in prompt)
    return request


def target_request(
    target: QosTarget | None, planner_address: str, pins: Sequence[PlacementRule] = ()
) -> ex.SetTargetRequest:
    request = ex.SetTargetRequest(
        planner_address=planner_address, pins=[common.pin_to_proto(p) for p in pins]
    )
    if target is not None:
        request.target.CopyFrom(common.target_to_proto(target))
    return request


def evaluate_request(corpus: str, max_tokens: int, plan: Plan | None) -> ex.EvaluateRequest:
    request = ex.EvaluateRequest(corpus=corpus, max_tokens=max_tokens)
    if plan is not None:
        request.plan.CopyFrom(common.plan_to_proto(plan))
    return request


class ExecutorClient(SyncBase):
    """Blocking client of one executor (`host:port`). Torch-free."""

    def __init__(self, address: str, options: ConnectOptions | None = None) -> None:
        super().__init__(address, options)
        self._stub = ex_grpc.ExecutorServiceStub(self._channel)

    def info(self) -> ExecutorInfo:
        """Identity, tiers, plan in force and standing target."""
        return codec.info_from_proto(self._unary(self._stub.GetInfo, ex.GetInfoRequest()))

    def get_profile(self, timeout: float | None = None) -> Profile:
        """The executor's profile (the first call measures it: no deadline by default)."""
        return common.profile_from_proto(
            self._unary(self._stub.GetProfile, ex.GetProfileRequest(), timeout).profile
        )

    def measure_profile(
        self, corpus: str = "", tokens: int = 0, measure_quality: bool = False, timeout: float | None = None
    ) -> Generator[MeasureEvent, None, None]:
        """Measure again: ProfileProgress events, then the Profile."""
        request = ex.MeasureProfileRequest(corpus=corpus, tokens=tokens, measure_quality=measure_quality)
        return self._stream(self._stub.MeasureProfile, request, timeout, codec.measure_event_from_proto)

    def apply_plan(self, plan: Plan, timeout: Any = DEFAULT_DEADLINE) -> SwitchReport:
        """Switch to `plan`; a rejected plan leaves the running plan untouched."""
        reply = self._unary(
            self._stub.ApplyPlan, ex.ApplyPlanRequest(plan=common.plan_to_proto(plan)), timeout
        )
        return common.switch_from_proto(reply.report)

    def set_budget(self, tier: str, budget_bytes: int) -> BudgetOutcome:
        """Change a tier's budget (re-plans against the standing target if there is one)."""
        request = ex.SetBudgetRequest(tier=tier, budget_bytes=budget_bytes)
        return codec.budget_outcome_from_proto(self._unary(self._stub.SetBudget, request))

    def set_target(
        self, target: QosTarget | None, planner_address: str = "", pins: Sequence[PlacementRule] = ()
    ) -> None:
        """Set (or with None clear) the standing target, the planner to ask on budget changes and the
        pins its re-plans keep."""
        self._unary(self._stub.SetTarget, target_request(target, planner_address, pins))

    def generate(
        self, prompt: Prompt, sampling: Sampling | None = None, timeout: float | None = None
    ) -> Generator[GenerationEvent, None, None]:
        """Stream tokens for `prompt` (text, or a conversation to render with the chat template); the last
        event carries stats. Closing the generator cancels the request."""
        request = generate_request(prompt, sampling)
        return self._stream(self._stub.Generate, request, timeout, codec.event_from_proto)

    def complete(
        self, prompt: Prompt, sampling: Sampling | None = None, timeout: float | None = None
    ) -> Completion:
        """Generate for `prompt` (text or a conversation) and return the whole text."""
        reply = self._unary(self._stub.Complete, generate_request(prompt, sampling), timeout)
        return codec.completion_from_proto(reply)

    def evaluate(
        self, corpus: str, max_tokens: int = 0, plan: Plan | None = None, timeout: float | None = None
    ) -> Evaluation:
        """Perplexity and tokens/s under `plan` (default: the plan in force) on `corpus`."""
        reply = self._unary(self._stub.Evaluate, evaluate_request(corpus, max_tokens, plan), timeout)
        return codec.evaluation_from_proto(reply)


class AsyncExecutorClient(AsyncBase):
    """asyncio client of one executor; the same calls as ExecutorClient, awaited."""

    def __init__(self, address: str, options: ConnectOptions | None = None) -> None:
        super().__init__(address, options)
        self._stub = ex_grpc.ExecutorServiceStub(self._channel)

    async def info(self) -> ExecutorInfo:
        """Identity, tiers, plan in force and standing target."""
        return codec.info_from_proto(await self._unary(self._stub.GetInfo, ex.GetInfoRequest()))

    async def get_profile(self, timeout: float | None = None) -> Profile:
        """The executor's profile (the first call measures it: no deadline by default)."""
        reply = await self._unary(self._stub.GetProfile, ex.GetProfileRequest(), timeout)
        return common.profile_from_proto(reply.profile)

    def measure_profile(
        self, corpus: str = "", tokens: int = 0, measure_quality: bool = False, timeout: float | None = None
    ) -> AsyncGenerator[MeasureEvent, None]:
        """Measure again: ProfileProgress events, then the Profile."""
        request = ex.MeasureProfileRequest(corpus=corpus, tokens=tokens, measure_quality=measure_quality)
        return self._stream(self._stub.MeasureProfile, request, timeout, codec.measure_event_from_proto)

    async def apply_plan(self, plan: Plan, timeout: Any = DEFAULT_DEADLINE) -> SwitchReport:
        """Switch to `plan`; a rejected plan leaves the running plan untouched."""
        request = ex.ApplyPlanRequest(plan=common.plan_to_proto(plan))
        return common.switch_from_proto((await self._unary(self._stub.ApplyPlan, request, timeout)).report)

    async def set_budget(self, tier: str, budget_bytes: int) -> BudgetOutcome:
        """Change a tier's budget (re-plans against the standing target if there is one)."""
        request = ex.SetBudgetRequest(tier=tier, budget_bytes=budget_bytes)
        return codec.budget_outcome_from_proto(await self._unary(self._stub.SetBudget, request))

    async def set_target(
        self, target: QosTarget | None, planner_address: str = "", pins: Sequence[PlacementRule] = ()
    ) -> None:
        """Set (or with None clear) the standing target, the planner to ask on budget changes and the
        pins its re-plans keep."""
        await self._unary(self._stub.SetTarget, target_request(target, planner_address, pins))

    def generate(
        self, prompt: Prompt, sampling: Sampling | None = None, timeout: float | None = None
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Stream tokens for `prompt` (text, or a conversation to render with the chat template); the last
        event carries stats. Closing the generator cancels the request."""
        request = generate_request(prompt, sampling)
        return self._stream(self._stub.Generate, request, timeout, codec.event_from_proto)

    async def complete(
        self, prompt: Prompt, sampling: Sampling | None = None, timeout: float | None = None
    ) -> Completion:
        """Generate for `prompt` (text or a conversation) and return the whole text."""
        reply = await self._unary(self._stub.Complete, generate_request(prompt, sampling), timeout)
        return codec.completion_from_proto(reply)

    async def evaluate(
        self, corpus: str, max_tokens: int = 0, plan: Plan | None = None, timeout: float | None = None
    ) -> Evaluation:
        """Perplexity and tokens/s under `plan` (default: the plan in force) on `corpus`."""
        reply = await self._unary(self._stub.Evaluate, evaluate_request(corpus, max_tokens, plan), timeout)
        return codec.evaluation_from_proto(reply)
