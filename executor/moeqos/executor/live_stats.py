"""Live measurement of decode steps: what the executor actually does, step by step, while it serves.

The decode loop calls a stream's sink once per generated token with the seconds since the stream's
previous token (moeqos.executor.batch_stream.Stream); the sink stamps it with the clock, the
stream and the plan in force, and keeps it for `horizon` seconds.
Readers ask for the decode steps of the last few seconds (recalibration) or for rolling rates (the
QoS loop, GetInfo). The first token of a stream (its wait and prefill since the request arrived) is
kept apart from the decode steps: the planner predicts a decode step, and the recalibration fits
decode steps only. It counts in the rate a stream's client sees, which is the rate a floor is held
at, through the overhead of that rate over the decode rate (measured on the default model with 48-token requests back to back: the decode rate read 8-13%
above what the client counted, and the loop judged a plan its client saw at 40-47 tok/s as meeting
a floor of 46.4).

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
    first: bool = False
    """The stream's first token: `seconds` since the request arrived (its wait and prefill), not a
    decode step."""


@dataclass(frozen=True)
class WindowRate:
    """Rates measured over the last `seconds`."""

    seconds: float
    tokens: int
    """Decode tokens (first tokens of streams excluded) in the window, all streams together."""
    streams: int
    """Streams with at least two decode steps in the window (the ones a rate is measured for)."""
    stream_tokens_per_s: float | None
    """Those streams' decode tokens over the seconds they span in the window (each from the start of its
    first step to the end of its last, summed): the decode rate, as the planner predicts it; None
    without any."""
    executor_tokens_per_s: float
    """All streams' decode tokens divided by the window."""
    covered: float = 0.0
    """Seconds from the start of the window's first step to the end of its last (0 without steps):
    how much of the window the steps counted really span."""
    client_tokens_per_s: float | None = None
    """The same, as the streams' clients see it: a first token in the window counts, and its span starts
    at the request's arrival (its wait and prefill)."""

    @property
    def overhead(self) -> float:
        """Decode rate over the clients' rate (>= 1): what a plan's decode rate must exceed a floor by."""
        decode, client = self.stream_tokens_per_s, self.client_tokens_per_s
        return max(decode / client, 1.0) if decode and client else 1.0


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
            self.record(stream, seconds, first=index == 0)

        return sink

    def record(self, stream: int, seconds: float, first: bool = False) -> None:
        """Keep one step, finished now, of `stream` under the plan in force (`first`: its first token,
        `seconds` since the request arrived)."""
        now = self.clock()
        with self._lock:
            self._steps.append(StepRecord(stream, now, seconds, self._plan(), self._threads(), first))
            while self._steps and self._steps[0].end < now - self.horizon:
                self._steps.popleft()

    def steps(self, seconds: float) -> list[StepRecord]:
        """The decode steps that finished in the last `seconds`, oldest first (first tokens left out)."""
        return [s for s in self._recent(seconds) if not s.first]

    def _recent(self, seconds: float) -> list[StepRecord]:
        since = self.clock() - seconds
        with self._lock:
            return [s for s in self._steps if s.end >= since]

    def window(self, seconds: float, plan: Plan | None = None, threads: int | None = None) -> WindowRate:
        """Rates over the last `seconds` (see WindowRate), counting only steps under `plan` and at
        `threads` threads when given."""
        records = [s for s in self._recent(seconds) if _under(s, plan, threads)]
        by_stream: dict[int, list[StepRecord]] = {}
        for record in records:
            by_stream.setdefault(record.stream, []).append(record)
        measured = [s for s in by_stream.values() if sum(not r.first for r in s) >= 2]
        steps = [r for r in records if not r.first]
        return WindowRate(
            seconds=seconds,
            tokens=len(steps),
            streams=len(measured),
            stream_tokens_per_s=_pooled_rate([[r for r in s if not r.first] for s in measured]),
            executor_tokens_per_s=len(steps) / seconds,
            covered=window_span(steps) if steps else 0.0,
            client_tokens_per_s=_pooled_rate(measured),
        )

    def step_rate(self, plan: Plan, threads: int, since: float, need: int) -> float | None:
        """Decode tok/s (steps / their summed seconds) of the steps under `plan` at `threads` threads
        that finished after clock time `since`; None with fewer than `need`."""
        with self._lock:
            steps = [s for s in self._steps if s.end > since and not s.first and _under(s, plan, threads)]
        if len(steps) < max(need, 1):
            return None
        return len(steps) / max(sum(s.seconds for s in steps), 1e-9)


def _under(step: StepRecord, plan: Plan | None, threads: int | None) -> bool:
    return (plan is None or step.plan is plan) and (threads is None or step.threads == threads)


def window_span(steps: Sequence[StepRecord]) -> float:
    """Wall seconds from the start of the first of `steps` (in time order) to the end of the last."""
    return steps[-1].end - (steps[0].end - steps[0].seconds)


def _pooled_rate(streams: list[list[StepRecord]]) -> float | None:
    """Their tokens over the seconds they span, summed over streams: the per-stream rate weighted by
    how long each ran in the window (a stream that only began at its end, with its prefill and two
    tokens, weighs as little as it lasted). None without streams."""
    if not streams:
        return None
    return sum(len(s) for s in streams) / max(sum(window_span(s) for s in streams), 1e-9)
