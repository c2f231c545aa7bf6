"""A slow reader cannot hold the executor (issue 16, case 3): a stream whose reader keeps its HTTP/2
window shut is cancelled after the write window and its generation slot freed; a prompt far past the
context is refused by its size before any tokenizing."""

from __future__ import annotations

import time

import pytest
from moeqos.bench.slow_reader import SlowReader
from moeqos.client import ExecutorClient, Sampling
from moeqos.core.errors import OutOfRange
from moeqos.proto.executor.v1 import executor_pb2 as ex

from tests.service.service_harness import address

GENERATE = "/moeqos.executor.v1.ExecutorService/Generate"
GREEDY = Sampling(max_tokens=4, temperature=0.0)


def _wait(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_reader_that_never_reads_loses_its_slot(stack, profile_file):
    handle = stack.executor(tier_budgets={"disk": 0}, max_concurrent=1, max_queued=0, write_window_s=1.0)
    admission = handle.servicer.admission
    request = ex.GenerateRequest(prompt="the quick brown fox", sampling=ex.SamplingParams(max_tokens=200))
    with (
        ExecutorClient(address(handle.port)) as client,
        SlowReader(handle.port, GENERATE, request.SerializeToString()) as reader,
    ):
        _wait(lambda: admission.active == 1, "the slow stream to take the only slot")
        _wait(lambda: admission.active == 0, "the stalled stream to be cancelled", timeout=15.0)
        assert reader.data_bytes == 0  # it never opened its window: nothing was sent to it
        # (its HTTP/2 stream stays open until the peer leaves: gRPC's server API cannot reset one)
        assert client.complete("hello", GREEDY, timeout=30).text is not None  # the slot serves others


def test_a_huge_prompt_is_refused_by_size_before_tokenizing(stack, profile_file, monkeypatch):
    handle = stack.executor(tier_budgets={"disk": 0})
    runtime = handle.servicer.runtime
    tokenized: list[int] = []
    encode = runtime.tokenizer.encode
    monkeypatch.setattr(
        runtime.tokenizer,
        "encode",
        lambda text, *a, **k: tokenized.append(len(text)) or encode(text, *a, **k),
    )
    with ExecutorClient(address(handle.port)) as client:
        with pytest.raises(OutOfRange, match="prompt"):
            client.complete("ab " * 400_000, GREEDY, timeout=30)  # 1.2 MB of text, far past 1024 tokens
        assert tokenized == []
        assert client.complete("hello", GREEDY).text is not None
        assert tokenized == [5]
