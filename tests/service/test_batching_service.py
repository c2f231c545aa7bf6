"""Continuous batching through real calls on a loopback port: GetInfo reports the limits, streams up to
the batch size decode together, up to the queue depth wait, and past it a request is refused at once."""

from __future__ import annotations

import threading
import time

import pytest
from moeqos.client import ExecutorClient, Sampling
from moeqos.core.errors import OverBudget

from tests.service.service_harness import address
from tests.service.test_admission import _result, _wait


def test_batch_decodes_together_queues_then_refuses(stack):
    handle = stack.executor(max_concurrent=2, max_queued=1, max_tokens_in_flight=4000)
    runtime = handle.servicer.runtime
    rows: list[int] = []
    forward = runtime.forward_logits

    def recording(token_ids, *args, **kwargs):
        rows.append(token_ids.shape[0])
        return forward(token_ids, *args, **kwargs)

    runtime.forward_logits = recording
    target = address(handle.port)
    with (
        ExecutorClient(target) as a,
        ExecutorClient(target) as b,
        ExecutorClient(target) as c,
        ExecutorClient(target) as d,
    ):
        info = a.info()
        assert (info.max_batch_size, info.max_queued_generations, info.max_tokens_in_flight) == (2, 1, 4000)
        first, second = (
            a.generate("hello", Sampling(max_tokens=900)),
            b.generate("hi", Sampling(max_tokens=900)),
        )
        for _ in range(3):
            next(first), next(second)
        assert max(rows) == 2  # both streams in one decode step
        queued = c.generate("hello", Sampling(max_tokens=2))
        queued_done = stack.bg.loop.run_in_executor(None, lambda: list(queued))
        _wait(lambda: handle.servicer.admission.waiting == 1)
        info = d.info()
        assert (info.active_generations, info.queued_generations) == (2, 1)
        assert info.tokens_in_flight >= 2 * 900
        started = time.monotonic()
        with pytest.raises(OverBudget, match="busy"):
            d.complete("hello", Sampling(max_tokens=2))
        assert time.monotonic() - started < 5
        first.close()  # a place frees: the queued request joins the batch and completes
        assert stack.bg.run(_result(queued_done))[-1].stats.generated_tokens == 2
        second.close()
    _wait(lambda: runtime.scheduler.active == 0)


def test_every_step_of_concurrent_streams_runs_on_the_thread_that_loaded_the_model(stack):
    """One OS thread runs all decode steps (moeqos.executor.torch_threads: a second thread's OpenMP
    team slows every step), whichever stream's reader asked for the step."""
    handle = stack.executor(max_concurrent=4)
    runtime = handle.servicer.runtime
    stepped_on: set[int] = set()
    forward = runtime.forward_logits

    def recording(token_ids, *args, **kwargs):
        stepped_on.add(threading.get_ident())
        return forward(token_ids, *args, **kwargs)

    runtime.forward_logits = recording
    target = address(handle.port)
    with ExecutorClient(target) as a, ExecutorClient(target) as b, ExecutorClient(target) as c:
        streams = [
            stack.bg.loop.run_in_executor(
                None, lambda client=client: client.complete("hi", Sampling(max_tokens=6))
            )
            for client in (a, b, c)
        ]
        for stream in streams:
            assert stack.bg.run(_result(stream)).stats.generated_tokens == 6
    loaded_on = handle.decoding.submit(threading.get_ident).result(timeout=10)
    assert stepped_on == {loaded_on}
