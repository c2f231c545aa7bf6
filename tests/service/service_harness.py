"""Servers for the service tests: real planner and executor servers on 127.0.0.1:0, each on an event
loop of its own in a background thread, so blocking clients and asyncio clients (on the test's loop)
can both call them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from moeqos.api.server import Server
from moeqos.core.precision import Precision
from moeqos.executor.server import ExecutorHandle, ExecutorServerConfig, start_executor
from moeqos.executor.service_measure import MeasureSettings
from moeqos.executor.variant_warmup import WarmupSettings
from moeqos.planner.server import PlannerServerConfig, start_planner

T = TypeVar("T")

FAST_MEASURE = MeasureSettings(tokens=64, quality_tokens=32, repeats=1, quality_precisions=(Precision.BF16,))
"""Profile measurement small enough for a 2-core CI box."""
NO_WARMUP = WarmupSettings(enabled=False)
"""No variants built ahead unless a test asks (tests/service/test_variants_ahead.py): a build in the
background of every executor of the suite would load the CI box and add expert objects to the
process that memory tests count."""


class BackgroundLoop:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run `coro` on the background loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class Stack:
    """Servers started on one background loop; `close()` stops them all."""

    def __init__(self, model_dir: Path, profile_path: Path) -> None:
        self.model_dir = model_dir
        self.profile_path = profile_path
        """Shared by every executor: measured once, then served by each new executor (same model)."""
        self.bg = BackgroundLoop()
        self._executors: list[ExecutorHandle] = []
        self._planners: list[Server] = []

    def executor(self, wait: bool = True, **overrides: Any) -> ExecutorHandle:
        """Start an executor on the tiny model (`overrides` are ExecutorServerConfig fields)."""
        base = ExecutorServerConfig(
            listen="127.0.0.1:0",
            model_dir=self.model_dir,
            measure=FAST_MEASURE,
            grace_seconds=2.0,
            profile_path=self.profile_path,
            warmup=NO_WARMUP,
        )
        loader = overrides.pop("loader", None)
        config = replace(base, **overrides)
        handle = self.bg.run(start_executor(config, loader) if loader else start_executor(config))
        self._executors.append(handle)
        if wait:
            self.bg.run(_wait(handle.ready))
        return handle

    def planner(self, **overrides: Any) -> Server:
        config = replace(PlannerServerConfig(listen="127.0.0.1:0"), **overrides)
        server, _ = self.bg.run(start_planner(config))
        self._planners.append(server)
        return server

    def started(self) -> int:
        """How many executors this stack has started (a mark for `stop_started_since`)."""
        return len(self._executors)

    def stop_started_since(self, mark: int) -> None:
        """Stop the executors started after `mark` (a test's own, at its end): each left running keeps a
        loaded model and a QoS loop ticking on the shared background loop, and ~60 of them by the end of
        the suite slowed that loop until a 300-token stream outlived a 30 s graceful stop."""
        for handle in self._executors[mark:]:
            self.bg.run(handle.stop(0.5))
        del self._executors[mark:]

    def close(self) -> None:
        for handle in self._executors:
            self.bg.run(handle.stop(0.5))
        for server in self._planners:
            self.bg.run(server.stop(0.5))
        self.bg.close()


async def _wait(task: asyncio.Task[None]) -> None:
    await asyncio.shield(task)


def address(port: int) -> str:
    return f"127.0.0.1:{port}"
