"""`/metrics` of the executor and the planner (`metrics_listen`), scraped over HTTP and parsed with the
Prometheus text parser, and the one log line per call."""

from __future__ import annotations

import logging
from urllib.request import urlopen

import pytest
from moeqos.client import ExecutorClient, PlannerClient, Sampling
from moeqos.core.errors import InvalidArgument
from moeqos.core.plan import parse_plan
from moeqos.core.qos import QosTarget
from moeqos.executor.server import ExecutorHandle
from prometheus_client.parser import text_string_to_metric_families

from tests.service.service_harness import Stack, address

GENERATE = "/moeqos.executor.v1.ExecutorService/Generate"
APPLY = "/moeqos.executor.v1.ExecutorService/ApplyPlan"


def scrape(port: int) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Metric family name -> its samples (name, labels, value)."""
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


def value(families: dict, sample: str, **labels: str) -> float:
    family = next(name for name in families if sample.startswith(name))
    return sum(v for name, got, v in families[family] if name == sample and labels.items() <= got.items())


@pytest.fixture(scope="module")
def metered(stack: Stack) -> ExecutorHandle:
    """An executor with its metrics endpoint on a free loopback port and a disk tier to page from."""
    return stack.executor(metrics_listen="127.0.0.1:0")


def test_executor_metrics_cover_calls_generations_switches_pool_and_target(
    metered: ExecutorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    assert metered.server.metrics_endpoint is not None
    port = metered.server.metrics_endpoint.port
    before = scrape(port)
    with ExecutorClient(address(metered.port)) as client, caplog.at_level(logging.INFO, "moeqos.requests"):
        plan = parse_plan("bf16@cpu,L0.E*=bf16@disk", 2, 4, "cpu")  # layer 0's experts paged from disk
        client.apply_plan(plan)
        with pytest.raises(InvalidArgument):
            client.apply_plan(parse_plan("bf16@cpu", 3, 4, "cpu"))  # the wrong shape
        stats = list(client.generate("hello world", Sampling(max_tokens=5)))[-1].stats
        assert stats is not None
        client.set_target(QosTarget(min_tokens_per_s=1.0))
        after = scrape(port)
        client.set_target(None)

    assert (
        value(after, "moeqos_grpc_requests_total", method=APPLY, code="OK")
        - value(before, "moeqos_grpc_requests_total", method=APPLY, code="OK")
        == 1
    )
    assert value(after, "moeqos_grpc_requests_total", method=APPLY, code="INVALID_ARGUMENT") >= 1
    assert value(after, "moeqos_grpc_request_duration_seconds_count", method=GENERATE) >= 1
    assert value(after, "moeqos_grpc_requests_in_flight", method=GENERATE) == 0  # the stream has ended
    assert value(after, "moeqos_generated_tokens_total") - value(before, "moeqos_generated_tokens_total") == (
        stats.generated_tokens
    )
    assert value(after, "moeqos_prompt_tokens_total") >= stats.prompt_tokens
    assert value(after, "moeqos_time_to_first_token_seconds_count") >= 1
    assert value(after, "moeqos_decode_tokens_per_second_count") >= 1
    assert value(after, "moeqos_generations_total", finish_reason=stats.finish_reason) >= 1
    assert value(after, "moeqos_plan_switches_total") - value(before, "moeqos_plan_switches_total") == 1
    assert value(after, "moeqos_plan_switch_duration_seconds_count") >= 1
    assert value(after, "moeqos_plan_switch_experts_changed_total") >= 4
    assert value(after, "moeqos_expert_pool_misses_total") > 0  # layer 0's experts were paged in
    assert value(after, "moeqos_expert_bytes_moved_total") > 0
    assert "moeqos_expert_pool_hits" in after and "moeqos_expert_pool_slots" in after
    assert value(after, "moeqos_standing_target_state", moeqos_standing_target_state="none") == 0
    assert value(after, "moeqos_standing_target", bound="min_tokens_per_s") == 1.0
    assert value(before, "moeqos_standing_target_state", moeqos_standing_target_state="none") == 1

    lines = [r.getMessage() for r in caplog.records if r.name == "moeqos.requests"]
    generate = [line for line in lines if line.startswith(f"rpc={GENERATE} code=OK")]
    assert generate and f"tokens={stats.generated_tokens}" in generate[-1] and "duration_ms=" in generate[-1]
    assert any(line.startswith(f"rpc={APPLY} code=INVALID_ARGUMENT") for line in lines)


def test_planner_metrics_count_calls_by_method_and_code(stack: Stack) -> None:
    planner = stack.planner(metrics_listen="127.0.0.1:0")
    assert planner.metrics_endpoint is not None
    with PlannerClient(address(planner.port)) as client:
        assert client.health() == "SERVING"
    families = scrape(planner.metrics_endpoint.port)
    checks = value(families, "moeqos_grpc_requests_total", method="/grpc.health.v1.Health/Check", code="OK")
    assert checks >= 1
    assert "moeqos_grpc_request_duration_seconds" in families


def test_metrics_are_off_unless_asked_for(metered: ExecutorHandle, executor: ExecutorHandle) -> None:
    assert executor.server.metrics_endpoint is None
    assert metered.server.metrics_endpoint is not None
