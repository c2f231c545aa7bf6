"""The gateway's Prometheus metrics (its own registry, served at `GET /metrics`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from moeqos.api.metrics import LATENCY_BUCKETS
from moeqos.core.service_types import GenerationStats
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RATE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)

InFlight = Callable[[], Iterator[tuple[str, str, int]]]
"""Yields (model, executor address, requests in flight) at scrape time."""


class GatewayMetrics:
    """HTTP requests by route and status, their latency, and what the generations behind them did."""

    def __init__(self, in_flight: InFlight) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "moeqos_gateway_requests",
            "HTTP requests answered, by route, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "moeqos_gateway_request_duration_seconds",
            "Time from a request's arrival to its response's last byte, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "moeqos_gateway_time_to_first_token_seconds",
            "Time from a generation request's arrival to its first token, by model.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "moeqos_gateway_tokens",
            "Tokens of generation requests, by model and kind (prompt or completion).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.decode_rate = Histogram(
            "moeqos_gateway_decode_tokens_per_second",
            "Decode rate the executor reported for each generation, by model.",
            ["model"],
            buckets=RATE_BUCKETS,
            registry=self.registry,
        )
        self.finished = Counter(
            "moeqos_gateway_generations",
            "Finished generations, by model and OpenAI finish reason.",
            ["model", "finish_reason"],
            registry=self.registry,
        )
        self.registry.register(_InFlightCollector(in_flight))

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def generation(self, model: str, stats: GenerationStats, finish_reason: str, ttft_s: float) -> None:
        self.tokens.labels(model, "prompt").inc(stats.prompt_tokens)
        self.tokens.labels(model, "completion").inc(stats.generated_tokens)
        self.finished.labels(model, finish_reason).inc()
        if stats.generated_tokens:
            self.ttft.labels(model).observe(ttft_s)
            self.decode_rate.labels(model).observe(stats.tokens_per_s)


class _InFlightCollector(Collector):
    def __init__(self, in_flight: InFlight) -> None:
        self._in_flight = in_flight

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "moeqos_gateway_in_flight",
            "Requests the gateway has on each executor now (what routing balances).",
            labels=["model", "executor"],
        )
        for model, address, count in self._in_flight():
            family.add_metric([model, address], count)
        yield family
