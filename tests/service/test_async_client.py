"""The asyncio clients against the real servers (which run on their own loop in another thread)."""

from __future__ import annotations

import pytest
from moeqos.client import AsyncExecutorClient, AsyncPlannerClient, DeploySpec, ProfileProgress, Sampling
from moeqos.core.errors import InfeasibleTarget, InvalidArgument
from moeqos.core.profile import Profile
from moeqos.core.qos import QosTarget

from tests.service.service_harness import address


async def test_async_executor_stream_and_state(executor_address):
    async with AsyncExecutorClient(executor_address) as client:
        info = await client.info()
        events = [e async for e in client.generate("the quick brown fox", Sampling(max_tokens=6))]
        completion = await client.complete("the quick brown fox", Sampling(max_tokens=6))
        assert await client.health() == "SERVING"
    assert info.model.num_experts == 4
    assert events[-1].stats is not None and events[-1].stats.generated_tokens == 6
    assert completion.text == "".join(e.text for e in events)  # greedy: the same text twice


async def test_async_profile_streams_progress_then_the_profile(stack):
    handle = stack.executor()
    async with AsyncExecutorClient(address(handle.port)) as client:
        events = [e async for e in client.measure_profile(measure_quality=False)]
        cached = await client.get_profile()
    progress, last = events[:-1], events[-1]
    stages = {p.stage for p in progress if isinstance(p, ProfileProgress)}
    assert len(progress) > 3 and all(isinstance(p, ProfileProgress) for p in progress)
    assert stages >= {"frequency", "quant_error", "call_costs"}
    assert isinstance(last, Profile) and cached == last
    assert last.quality_points  # kept from the previous measurement, which measured them


async def test_async_planner_plan_deploy_and_errors(planner_address, executor_address):
    async with (
        AsyncPlannerClient(planner_address) as planner,
        AsyncExecutorClient(executor_address) as executor,
    ):
        profile = await executor.get_profile()
        outcome = await planner.plan(QosTarget(min_tokens_per_s=0.001), profile=profile)
        with pytest.raises(InfeasibleTarget):
            await planner.plan(QosTarget(min_tokens_per_s=1e12), profile=profile)
        with pytest.raises(InvalidArgument, match="distinct"):
            await planner.deploy([DeploySpec(executor_address, QosTarget(min_tokens_per_s=1))] * 2)
        [deployed] = await planner.deploy([DeploySpec(executor_address, QosTarget(min_tokens_per_s=0.001))])
        assert (await executor.info()).plan == deployed.plan
    assert outcome.plan == deployed.plan
