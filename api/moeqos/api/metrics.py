"""Prometheus metrics and one structured log line per call, shared by the planner and executor servers.

`ServerMetrics` owns one CollectorRegistry per server, not prometheus_client's global one: tests run
several servers in one process, and each must report only its own calls. `MetricsInterceptor` counts
every call by method and status code, times it, and logs one line when it ends:

    rpc=/moeqos.executor.v1.ExecutorService/Generate code=OK duration_ms=812.4 tokens=16

It must be the outermost interceptor so that it sees the status the error map chose. A handler adds
fields to its call's line with `annotate(tokens=16)`. The registry is served over HTTP at `/metrics`
by `serve_metrics` when the server's `metrics_listen` is set (off by default).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import grpc.aio
from moeqos.api.grpc_errors import Stream, Unary, wrap_handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("moeqos.requests")

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""Seconds; from a GetInfo (a millisecond) to a profile measurement (minutes)."""

_CALL: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("moeqos_call", default=None)


def annotate(**fields: Any) -> None:
    """Add fields to the log line of the call being handled (no effect outside a call)."""
    record = _CALL.get()
    if record is not None:
        record.update(fields)


class ServerMetrics:
    """The metrics of one server: its own registry, with the per-call figures every server has."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        """Holds this server's metrics; servers add their own domain metrics to it."""
        self.requests = Counter(
            "moeqos_grpc_requests",
            "gRPC calls handled, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "moeqos_grpc_request_duration_seconds",
            "Time from a call's start to its end (for streams, the last message), by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "moeqos_grpc_requests_in_flight",
            "Calls being handled now, by method.",
            ["method"],
            registry=self.registry,
        )

    def finish(self, method: str, code: grpc.StatusCode, seconds: float, fields: dict[str, Any]) -> None:
        """Count and time one finished call and write its log line."""
        self.requests.labels(method, code.name).inc()
        self.latency.labels(method).observe(seconds)
        extra = "".join(f" {key}={value}" for key, value in fields.items())
        log.info("rpc=%s code=%s duration_ms=%.1f%s", method, code.name, seconds * 1000, extra)


@dataclass
class MetricsEndpoint:
    """A running `/metrics` HTTP server (prometheus_client's, in a daemon thread)."""

    port: int
    """The bound port (useful with port 0)."""
    _server: Any

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(listen: str, registry: CollectorRegistry) -> MetricsEndpoint:
    """Serve `registry` in Prometheus text format on `host:port` (any path; `/metrics` by convention)."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return MetricsEndpoint(bound, server)


# ----- the interceptor ----------------------------------------------------------------------------


def _code(context: grpc.aio.ServicerContext, failed: BaseException | None) -> grpc.StatusCode:
    """The call's final status: what the handler (or the error map's abort) set, else OK or UNKNOWN."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if code is not None:  # some grpc versions report the raw integer value
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.OK if failed is None else grpc.StatusCode.UNKNOWN


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts, times and logs every call (see the module docstring); the outermost interceptor."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        return wrap_handler(handler, partial(self._unary, method), partial(self._stream, method))

    def _unary(self, method: str, behavior: Unary) -> Unary:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._observing(method, context):
                return await behavior(request, context)

        return observed

    def _stream(self, method: str, behavior: Stream) -> Stream:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with self._observing(method, context):
                async for item in behavior(request, context):
                    yield item

        return observed

    @contextmanager
    def _observing(self, method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
        """Count the call in flight, then record its status, duration and annotations when it ends."""
        record: dict[str, Any] = {}
        _CALL.set(record)
        started, failed = time.perf_counter(), None
        self._metrics.in_flight.labels(method).inc()
        try:
            yield
        except BaseException as exc:
            failed = exc
            raise
        finally:
            self._metrics.in_flight.labels(method).dec()
            code = grpc.StatusCode.CANCELLED if _cancelled(failed) else _code(context, failed)
            self._metrics.finish(method, code, time.perf_counter() - started, record)


def _cancelled(failed: BaseException | None) -> bool:
    """Whether the call ended because it was cancelled (client gone, deadline passed, shutdown)."""
    return isinstance(failed, asyncio.CancelledError | GeneratorExit)
