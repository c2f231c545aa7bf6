"""A bounded pool for the planner's expensive anonymous work (WhatIf, Frontier), with its own queue and
refusals, and work that stops when its caller leaves.

At most `max_running` jobs run at once (on the planner's solver threads, so Plan and Deploy keep the
rest) and `max_queued` wait; past that a call is refused at once with OverBudget (RESOURCE_EXHAUSTED).
Each job gets a `stop()` it checks between its steps (between frontier points): it turns true when the
caller cancels or its deadline passes (gRPC then cancels the handler) or the deadline passes while the
job runs. A job's slot is held until its thread really finishes, so abandoned work still counts
against the bound until it has stopped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from moeqos.core.errors import OverBudget, Unavailable

T = TypeVar("T")

Stop = Callable[[], bool]
"""Returns True once the caller no longer wants the result."""


class StopRequested(Unavailable):
    """Raised inside a job that saw `stop()` turn true: the caller has gone, or its deadline passed
    (it then sees DEADLINE_EXCEEDED whatever this maps to)."""


class WorkPool:
    """Bounds and cancels one kind of planner work (event-loop side; see the module docstring)."""

    def __init__(self, pool: Executor, max_running: int, max_queued: int, name: str = "work") -> None:
        if max_running < 1 or max_queued < 0:
            raise ValueError(f"need max_running >= 1 and max_queued >= 0, got {max_running}, {max_queued}")
        self.name = name
        self.max_running = max_running
        self.max_queued = max_queued
        self.running = 0
        """Jobs on a thread now (including ones whose caller left and that have not stopped yet)."""
        self.waiting = 0
        self._pool = pool
        self._slots = asyncio.Semaphore(max_running)

    async def run(self, job: Callable[[Stop], T], deadline_s: float | None = None) -> T:
        """Run `job(stop)` on a thread once a slot is free; `deadline_s`: seconds the caller has left."""
        if self.running + self.waiting >= self.max_running + self.max_queued:
            raise OverBudget(
                f"planner busy: {self.running} {self.name} jobs running and {self.waiting} queued "
                f"(limits {self.max_running} + {self.max_queued}); retry later"
            )
        ends = None if deadline_s is None else time.monotonic() + deadline_s
        cancelled = threading.Event()

        def stop() -> bool:
            return cancelled.is_set() or (ends is not None and time.monotonic() > ends)

        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        future = asyncio.get_running_loop().run_in_executor(self._pool, job, stop)
        future.add_done_callback(self._finished)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def _finished(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned job's StopRequested is expected, not "never seen"
        self.running -= 1
        self._slots.release()


def checked(stop: Stop) -> None:
    """Raise StopRequested when `stop()` says the caller has gone."""
    if stop():
        raise StopRequested("the caller cancelled or its deadline passed")
