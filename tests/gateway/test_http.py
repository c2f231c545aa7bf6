"""The gateway over raw HTTP (httpx): server-sent events, auth, health, routing, failover, busy and
unreachable executors, error shapes, and its `/metrics` parsed with the Prometheus text parser."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from moeqos.executor.server import ExecutorHandle
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import FAST
from tests.gateway.gateway_harness import RunningGateway, start_gateway
from tests.service.service_harness import Stack, address

TIMEOUT = 60.0
"""Seconds any one HTTP call may take: the shared test machine can be slow (httpx defaults to 5)."""

CHAT = {"model": FAST, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0}


def dead_address() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return address(sock.getsockname()[1])


def wait_for_lines(caplog: pytest.LogCaptureFixture, logger: str, count: int) -> list[str]:
    """The logger's lines once there are `count` (the line is written after the last byte is sent)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [r.getMessage() for r in caplog.records if r.name == logger]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def sse_data(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def test_stream_is_server_sent_events_ending_with_done(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    # for the whole test: the gateway writes its line after the last byte, possibly after the stream closes
    caplog.set_level(logging.INFO, "moeqos.gateway")
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=CHAT | {"stream": True}, timeout=TIMEOUT
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        data = sse_data(reply)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    (line,) = wait_for_lines(caplog, "moeqos.gateway", 1)
    assert line.startswith("route=/v1/chat/completions method=POST status=200 duration_ms=")
    assert f"model={FAST}" in line and "tokens=" in line and "prompt_tokens=" in line and "finish=" in line


def test_bad_json_unknown_paths_and_methods_get_openai_errors(gateway: RunningGateway) -> None:
    bad = httpx.post(f"{gateway.url}/v1/completions", content=b"{not json", timeout=TIMEOUT)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert (
        httpx.get(f"{gateway.url}/v1/nothing", timeout=TIMEOUT).json()["error"]["type"] == "not_found_error"
    )
    assert httpx.get(f"{gateway.url}/v1/completions", timeout=TIMEOUT).status_code == 405
    two = httpx.post(
        f"{gateway.url}/v1/completions", json={"model": FAST, "prompt": "hi", "n": 2}, timeout=TIMEOUT
    )
    assert two.status_code == 400 and two.json()["error"]["param"] == "n"


def test_health_reports_each_executor(gateway: RunningGateway, executor_address: str) -> None:
    reply = httpx.get(f"{gateway.url}/health", timeout=TIMEOUT)
    assert reply.status_code == 200
    assert reply.json()["models"][FAST] == [{"address": executor_address, "status": "SERVING"}]


def test_token_is_required_with_any_case_of_the_bearer_scheme(executor_address: str) -> None:
    guarded = start_gateway({FAST: (executor_address,)}, token="s3cret")
    try:
        refused = httpx.post(f"{guarded.url}/v1/chat/completions", json=CHAT, timeout=TIMEOUT)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.get(
            f"{guarded.url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=TIMEOUT
        )
        assert wrong.status_code == 401
        for scheme in ("Bearer", "bearer"):
            ok = httpx.get(
                f"{guarded.url}/v1/models", headers={"Authorization": f"{scheme} s3cret"}, timeout=TIMEOUT
            )
            assert ok.status_code == 200
        assert httpx.get(f"{guarded.url}/health", timeout=TIMEOUT).status_code == 200  # probes stay open
    finally:
        guarded.close()


def test_unreachable_executors_are_503_and_failed_over(executor_address: str) -> None:
    dead = dead_address()
    running = start_gateway({"down": (dead,), "mixed": (dead, executor_address)})
    try:
        # "mixed" first: on a fresh router the dead executor is listed first and wins the tie, so the
        # first request really fails over to the live one (the second finds the dead one marked down)
        for _ in range(2):
            ok = httpx.post(
                f"{running.url}/v1/chat/completions", json=CHAT | {"model": "mixed"}, timeout=TIMEOUT
            )
            assert ok.status_code == 200, ok.text
        down = httpx.post(
            f"{running.url}/v1/chat/completions", json=CHAT | {"model": "down"}, timeout=TIMEOUT
        )
        assert down.status_code == 503
        assert down.json()["error"]["type"] == "service_unavailable"
        health = httpx.get(f"{running.url}/health", timeout=TIMEOUT)
        assert health.status_code == 503
        assert health.json()["models"]["mixed"][0] == {"address": dead, "status": "UNREACHABLE"}
    finally:
        running.close()


@pytest.fixture(scope="module")
def single_slot(stack: Stack) -> ExecutorHandle:
    """An executor that runs one generation and queues none."""
    return stack.executor(max_concurrent=1, max_queued=0)


@pytest.fixture
def occupied(stack: Stack, single_slot: ExecutorHandle) -> Iterator[ExecutorHandle]:
    """`single_slot` with its one slot held (as by a long generation) for the test's duration."""
    release = threading.Event()

    async def hold() -> None:
        async with single_slot.servicer.admission.slot():
            while not release.is_set():
                await asyncio.sleep(0.01)

    held = stack.bg.submit(hold())
    while single_slot.servicer.admission.active == 0:
        threading.Event().wait(0.01)
    yield single_slot
    release.set()
    held.result(10)


def test_a_busy_executor_is_429(occupied: ExecutorHandle) -> None:
    running = start_gateway({FAST: (address(occupied.port),)})
    try:
        busy = httpx.post(f"{running.url}/v1/chat/completions", json=CHAT, timeout=TIMEOUT)
        assert busy.status_code == 429
        assert busy.json()["error"]["type"] == "rate_limit_error"
    finally:
        running.close()


def test_a_busy_executor_is_passed_over_for_a_free_one(
    occupied: ExecutorHandle, executor_address: str
) -> None:
    running = start_gateway({FAST: (address(occupied.port), executor_address)})
    try:
        for _ in range(2):
            ok = httpx.post(f"{running.url}/v1/chat/completions", json=CHAT, timeout=TIMEOUT)
            assert ok.status_code == 200, ok.text
    finally:
        running.close()


def generate_calls(handle: ExecutorHandle) -> float:
    registry = handle.server.metrics.registry
    value = registry.get_sample_value(
        "moeqos_grpc_requests_total",
        {"method": "/moeqos.executor.v1.ExecutorService/Generate", "code": "OK"},
    )
    return value or 0.0


def test_requests_are_spread_over_equally_loaded_executors(
    executor: ExecutorHandle, single_slot: ExecutorHandle
) -> None:
    running = start_gateway({FAST: (address(executor.port), address(single_slot.port))})
    before = generate_calls(executor), generate_calls(single_slot)
    try:
        for _ in range(4):
            assert (
                httpx.post(f"{running.url}/v1/chat/completions", json=CHAT, timeout=TIMEOUT).status_code
                == 200
            )
    finally:
        running.close()
    assert (generate_calls(executor) - before[0], generate_calls(single_slot) - before[1]) == (2, 2)


def test_metrics_scrape_parses_with_every_gateway_metric(gateway: RunningGateway) -> None:
    httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=TIMEOUT).raise_for_status()
    httpx.post(f"{gateway.url}/v1/completions", json={"model": "nope", "prompt": "x"}, timeout=TIMEOUT)
    reply = httpx.get(f"{gateway.url}/metrics", timeout=TIMEOUT)
    assert reply.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    for name in (
        "moeqos_gateway_requests",
        "moeqos_gateway_request_duration_seconds",
        "moeqos_gateway_time_to_first_token_seconds",
        "moeqos_gateway_tokens",
        "moeqos_gateway_decode_tokens_per_second",
        "moeqos_gateway_generations",
        "moeqos_gateway_in_flight",
    ):
        assert name in families, name
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["moeqos_gateway_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("/v1/chat/completions", "200")] >= 1
    assert requests[("/v1/completions", "404")] >= 1
    tokens = {
        s.labels["kind"]: s.value
        for s in families["moeqos_gateway_tokens"].samples
        if s.name.endswith("_total")
    }
    assert tokens["prompt"] > 0 and tokens["completion"] > 0


def test_the_demo_step_asks_every_qos_class_through_the_gateway(gateway: RunningGateway) -> None:
    from moeqos.demo.gateway_step import QUESTION, ask_gateway

    said: list[str] = []
    answers = ask_gateway(gateway.url, said.append, max_tokens=3)
    assert list(answers) == [FAST]
    assert 1 <= answers[FAST]["usage"]["completion_tokens"] <= 3
    assert answers[FAST]["finish_reason"] in ("stop", "length")
    assert any(QUESTION in line for line in said) and any(line.startswith("try it: curl") for line in said)
