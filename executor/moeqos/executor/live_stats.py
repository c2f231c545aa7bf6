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
    threads: int = 0
    """torch's intra-op thread count wanted when the step finished (moeqos.executor.thread_knob);
    0 when the executor does not say."""


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
    covered: float = 0.0
    """Seconds from the start of the window's first step to the end of its last (0 without steps):
    how much of the window the steps counted really span."""


class LiveStats:
    """Recent decode steps of every stream, with rolling rates over them."""

    def __init__(
        self,
        plan: Callable[[], Plan],
        clock: Clock = time.monotonic,
        horizon: float = 60.0,
        threads: Callable[[], int] = lambda: 0,
    ) -> None:
        """`plan()` and `threads()`: the plan and thread count in force, stamped on every step."""
        self._plan = plan
        self._threads = threads
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
            self._steps.append(StepRecord(stream, now, seconds, self._plan(), self._threads()))
            while self._steps and self._steps[0].end < now - self.horizon:
                self._steps.popleft()

    def steps(self, seconds: float) -> list[StepRecord]:
        """The steps that finished in the last `seconds`, oldest first."""
        since = self.clock() - seconds
        with self._lock:
            return [s for s in self._steps if s.end >= since]

    def window(self, seconds: float, plan: Plan | None = None, threads: int | None = None) -> WindowRate:
        """Rates over the last `seconds` (see WindowRate), counting only steps under `plan` and at
        `threads` threads when given."""
        steps = [s for s in self.steps(seconds) if _under(s, plan, threads)]
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
            covered=window_span(steps) if steps else 0.0,
        )

    def step_rate(self, plan: Plan, threads: int, since: float, need: int) -> float | None:
        """Decode tok/s (steps / their summed seconds) of the steps under `plan` at `threads` threads
        that finished after clock time `since`; None with fewer than `need`."""
        with self._lock:
            steps = [s for s in self._steps if s.end > since and _under(s, plan, threads)]
        if len(steps) < max(need, 1):
            return None
        return len(steps) / max(sum(s.seconds for s in steps), 1e-9)


def _under(step: StepRecord, plan: Plan | None, threads: int | None) -> bool:
    return (plan is None or step.plan is plan) and (threads is None or step.threads == threads)


def window_span(steps: Sequence[StepRecord]) -> float:
    """Wall seconds from the start of the first of `steps` (in time order) to the end of the last."""
    return steps[-1].end - (steps[0].end - steps[0].seconds)


def _stream_rate(steps: list[StepRecord]) -> float:
    """tokens / (end of the last step - start of the first): the rate a client of this stream saw."""
    span = window_span(steps)
    return len(steps) / max(span, 1e-9)
