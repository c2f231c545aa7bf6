"""Live measurement of decode steps: what the executor actually does, step by step, while it serves.

The decode loop calls a stream's sink once per generated token with the seconds since the stream's
previous token (moeqos.executor.batch_stream.Stream); the sink stamps it with the clock, the
stream and the plan in force, and keeps it for `horizon` seconds.
Readers ask for the steps of the last few seconds (recalibration) or for rolling rates (the QoS
loop, GetInfo). The first step of a stream (prefill plus one token) is kept apart from the decode
rate: a floor is a decode rate, as the planner predicts it.

Thread-safe: streams record from worker threads, readers run on the event loop.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from moeqos.core.plan import Plan

Clock = Callable[[], float]
"""Monotonic seconds (time.monotonic, or a fake clock in tests)."""

StepSink = Callable[[int, float], None]
"""sink(index of the token in its stream, wall seconds since the stream's previous token)."""


@dataclass(frozen=True)
class StepRecord:
    """One decode step as measured."""

    stream: int
    """Which generation it belongs to (a per-executor counter)."""
    end: float
    """Clock time when the step finished."""
    seconds: float
    """Wall seconds since the stream's previous token: the forward pass, the wait for the model lock,
    sampling, and the hand-off of the previous token to the client (what the client's rate counts)."""
    plan: Plan
    """The plan in force when the step finished; its (precision, tier) per expert are the regressors."""


@dataclass(frozen=True)
class WindowRate:
    """Decode rates measured over the last `seconds`."""

    seconds: float
    tokens: int
    """Decode tokens (first tokens of streams excluded) in the window, all streams together."""
    streams: int
    """Streams with at least two decode steps in the window (the ones a rate is measured for)."""
    stream_tokens_per_s: float | None
    """Mean over those streams of tokens / (last end - first start) in the window; None without any."""
    executor_tokens_per_s: float
    """All streams' decode tokens divided by the window."""


class LiveStats:
    """Recent decode steps of every stream, with rolling rates over them."""

    def __init__(
        self, plan: Callable[[], Plan], clock: Clock = time.monotonic, horizon: float = 60.0
    ) -> None:
        self._plan = plan
        self.clock = clock
        self.horizon = horizon
        """Seconds of steps kept."""
        self._steps: deque[StepRecord] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count()

    def stream(self) -> StepSink:
        """A sink for one new generation."""
        stream = next(self._ids)

        def sink(index: int, seconds: float) -> None:
            if index > 0:  # the first token's step is prefill: time to first token, not decode rate
                self.record(stream, seconds)

        return sink

    def record(self, stream: int, seconds: float) -> None:
        """Keep one decode step, finished now, of `stream` under the plan in force."""
        now = self.clock()
        with self._lock:
            self._steps.append(StepRecord(stream, now, seconds, self._plan()))
            while self._steps and self._steps[0].end < now - self.horizon:
                self._steps.popleft()

    def steps(self, seconds: float) -> list[StepRecord]:
        """The steps that finished in the last `seconds`, oldest first."""
        since = self.clock() - seconds
        with self._lock:
            return [s for s in self._steps if s.end >= since]

    def window(self, seconds: float, plan: Plan | None = None) -> WindowRate:
        """Rates over the last `seconds` (see WindowRate), counting only steps under `plan` if given."""
        steps = [s for s in self.steps(seconds) if plan is None or s.plan is plan]
        by_stream: dict[int, list[StepRecord]] = {}
        for step in steps:
            by_stream.setdefault(step.stream, []).append(step)
        rates = [_stream_rate(s) for s in by_stream.values() if len(s) >= 2]
        return WindowRate(
            seconds=seconds,
            tokens=len(steps),
            streams=len(rates),
            stream_tokens_per_s=sum(rates) / len(rates) if rates else None,
            executor_tokens_per_s=len(steps) / seconds,
        )


def window_span(steps: Sequence[StepRecord]) -> float:
    """Wall seconds from the start of the first of `steps` (in time order) to the end of the last."""
    return steps[-1].end - (steps[0].end - steps[0].seconds)


def _stream_rate(steps: list[StepRecord]) -> float:
    """tokens / (end of the last step - start of the first): the rate a client of this stream saw."""
    span = window_span(steps)
    return len(steps) / max(span, 1e-9)
