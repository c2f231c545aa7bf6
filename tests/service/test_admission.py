"""The executor's bounded queue and cancellation, through real calls: past the limits a request is
refused at once with RESOURCE_EXHAUSTED; a cancelled stream stops the runtime generating."""

from __future__ import annotations

import time

import pytest
from moeqos.client import ExecutorClient, Sampling
from moeqos.core.errors import OverBudget, Unavailable

from tests.service.service_harness import address


def test_queue_bound_refuses_at_once(stack):
    handle = stack.executor(max_concurrent=1, max_queued=1)
    target = address(handle.port)
    with ExecutorClient(target) as a, ExecutorClient(target) as b, ExecutorClient(target) as c:
        running = a.generate("hello", Sampling(max_tokens=800))
        next(running)
        queued = b.generate("hello", Sampling(max_tokens=2))
        queued_started = stack.bg.loop.run_in_executor(None, lambda: list(queued))
        _wait(lambda: handle.servicer.admission.waiting == 1)
        started = time.monotonic()
        with pytest.raises(OverBudget, match="busy"):
            c.complete("hello", Sampling(max_tokens=2))
        assert time.monotonic() - started < 5
        running.close()  # cancel the long one: the queued request gets the slot and completes
        assert stack.bg.run(_result(queued_started))[-1].stats.generated_tokens == 2


def test_cancelled_stream_stops_generating(stack):
    handle = stack.executor()
    runtime = handle.servicer.runtime
    steps = _count_forward_steps(runtime)
    with ExecutorClient(address(handle.port)) as client:
        stream = client.generate("hello", Sampling(max_tokens=900))
        for _ in range(3):
            next(stream)
        stream.close()
        _wait(lambda: handle.servicer.admission.active == 0)
        time.sleep(0.3)
        settled = steps["n"]
        time.sleep(0.5)
        assert steps["n"] == settled < 900
        assert client.info().active_generations == 0


def test_deadline_cancels_generation(stack):
    handle = stack.executor()
    steps = _count_forward_steps(handle.servicer.runtime)
    with ExecutorClient(address(handle.port)) as client:
        with pytest.raises(Unavailable, match=r"(?i)deadline"):
            list(client.generate("hello", Sampling(max_tokens=900), timeout=0.5))
        _wait(lambda: handle.servicer.admission.active == 0)
        time.sleep(0.3)
        settled = steps["n"]
        time.sleep(0.5)
    assert steps["n"] == settled < 900


def _count_forward_steps(runtime):
    steps = {"n": 0}
    forward = runtime.forward_logits

    def counting(*args, **kwargs):
        steps["n"] += 1
        return forward(*args, **kwargs)

    runtime.forward_logits = counting
    return steps


async def _result(future):
    return await future


def _wait(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
