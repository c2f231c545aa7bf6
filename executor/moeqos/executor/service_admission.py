"""A bounded admission queue for generation requests: at most `max_active` run at once and at most
`max_queued` wait; past that a request is refused at once with OverBudget (RESOURCE_EXHAUSTED) rather
than left to hang."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from moeqos.core.errors import OverBudget


class Admission:
    """Counts and bounds the generations running and waiting (event-loop side, no locks needed)."""

    def __init__(self, max_active: int, max_queued: int) -> None:
        if max_active < 1 or max_queued < 0:
            raise ValueError(f"need max_active >= 1 and max_queued >= 0, got {max_active}, {max_queued}")
        self.max_active = max_active
        self.max_queued = max_queued
        self.active = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(max_active)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Held]:
        """Hold one generation slot for the body; OverBudget when every slot and queue place is taken.

        The body may hand the slot back early (`Held.release`, idempotent), e.g. when its stream stalls."""
        if self.active + self.waiting >= self.max_active + self.max_queued:
            raise OverBudget(
                f"executor busy: {self.active} generations running and {self.waiting} queued "
                f"(limits {self.max_active} + {self.max_queued}); retry later"
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        held = Held(self)
        try:
            yield held
        finally:
            held.release()

    def _release(self) -> None:
        self.active -= 1
        self._slots.release()


class Held:
    """One slot taken from an `Admission`; `release` gives it back once, however often it is called."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission._release()
            self._admission = None
