"""torch's intra-op thread count as a QoS actuator, and the policy that sets it.

Why a knob: torch runs each op's parallel region on all its threads and waits for the slowest, so a
process that takes one of two cores stalls a 2-thread executor at every op (a descheduled thread
holds the whole step), while the same executor on 1 thread keeps the core it has. A plan change alone
cannot win that back; fewer threads can. When the neighbour leaves, more threads are faster again.

`ThreadKnob` holds the count wanted; the thread that runs a forward step applies it under the model
lock (ExecutorRuntime.exclusive): torch keeps the count per OS thread once a thread has run a
parallel op, so setting it from the event loop would not reach the step's thread.

`ThreadPolicy` picks the count from the cores other processes keep busy (moeqos.executor.cpu_share):
round(cores - others), between 1 and the count the executor started with, at most one change every
`interval_s`. Others' use is read over `cpu_window_s`, and also over the shorter `fall_window_s`,
which may only take threads away: a lost core costs at once (measured beside a one-core neighbour:
2 threads decoded 0-4 tok/s where 1 thread decoded 45-55), a regained one only the difference
between the two counts, and a longer look keeps a brief burst of other work from giving threads back
too early. Each change is then judged by its measured effect: the decode rate of the plan in
force over the first `judge_tokens` steps at the new count against its steps of the last moment
(half the CPU window) at the old one. A change that
made decoding slower by more than `tolerance` is undone, and that change is not tried again for
`backoff_s`. Every change and every measured effect is reported with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


class ThreadKnob:
    """The intra-op thread count wanted; `apply()` on the thread about to run a step."""

    def __init__(
        self,
        threads: int,
        setter: Callable[[int], None] = torch.set_num_threads,
        getter: Callable[[], int] = torch.get_num_threads,
    ) -> None:
        self.most = threads
        """The count the executor started with: the policy never goes above it."""
        self.wanted = threads
        self._set = setter
        self._get = getter

    def apply(self) -> None:
        """Make the calling thread's torch use `wanted` threads (cheap when it already does)."""
        if self._get() != self.wanted:
            self._set(self.wanted)


@dataclass(frozen=True)
class ThreadSettings:
    """Knobs of the thread policy."""

    enabled: bool = True
    cpu_window_s: float = 2.0
    """Other processes' CPU use is averaged over this long."""
    fall_window_s: float = 1.0
    """... and over this long to take threads away sooner (module docstring)."""
    interval_s: float = 2.0
    """At least this long between two changes."""
    judge_tokens: int = 16
    """Decode steps at the new count that judge a change."""
    judge_timeout_s: float = 10.0
    """A change not judged within this long (nothing decoded) is left unjudged."""
    tolerance: float = 0.15
    """A change is undone when the rate after it is below the rate before by more than this. Wide,
    because the harm it is there for is large and the noise is not small: two threads on one free
    core decode 90% slower, while one-second rates swing by +-15% on a shared 2-core machine
    (measured: at 5% over 8 steps, 1 -> 2 threads after a neighbour left read 7.5% slower, and one
    thread was kept for 30 s on a free machine)."""
    backoff_s: float = 30.0
    """An undone change is not tried again for this long."""


@dataclass(frozen=True)
class ThreadChange:
    """What the policy says: a new count (None: only a note, e.g. a measured effect) and why."""

    threads: int | None
    reason: str


RateAt = Callable[[int, float, int], float | None]
"""rate(count, since, need): decode tok/s of the plan in force over its steps at thread count `count`
that finished after `since`; None with fewer than `need` of them."""


class ThreadPolicy:
    """Chooses the thread count from other processes' CPU use and judges each change (module docstring)."""

    def __init__(self, settings: ThreadSettings, cores: int) -> None:
        self.settings = settings
        self.cores = cores
        self.last_change = -math.inf
        self._pending: tuple[int, int, float | None, float] | None = None
        """(count before, count after, rate before, when) of the change not judged yet."""
        self._refused: dict[tuple[int, int], float] = {}
        """(from, to) -> until when that change is not tried again (it was measured slower)."""

    def decide(
        self,
        now: float,
        others: float | None,
        current: int,
        most: int,
        rate: RateAt,
        recent: float | None = None,
    ) -> ThreadChange | None:
        """The change to make at `now` (or a note), given the cores others use (over `cpu_window_s`;
        `recent`: over `fall_window_s`, None when not read) and the count in force."""
        s = self.settings
        if self._pending is not None:
            return self._judge(now, current, rate)
        if others is None or now - self.last_change < s.interval_s:
            return None
        if recent is not None and recent > others:  # fewer threads at once, more only after a while
            others = recent
        want = min(max(math.floor(self.cores - others + 0.5), 1), most)
        if want == current or self._refused.get((current, want), -math.inf) > now:
            return None
        # Before: the last moments at the old count only (earlier steps may predate the neighbour).
        before = rate(current, now - s.cpu_window_s / 2, 2)
        self._pending = (current, want, before, now)
        self.last_change = now
        return ThreadChange(
            want, f"other processes keep {others:.2f} of {self.cores} cores busy: {current} -> {want} threads"
        )

    def _judge(self, now: float, current: int, rate: RateAt) -> ThreadChange | None:
        assert self._pending is not None
        before_count, after_count, before, when = self._pending
        if current != after_count:  # changed behind the policy's back: nothing to judge
            self._pending = None
            return None
        after = rate(after_count, when, self.settings.judge_tokens)
        if after is None:
            if now - when > self.settings.judge_timeout_s:
                self._pending = None
                return ThreadChange(
                    None, f"{before_count} -> {after_count} threads: not judged (no decoding)"
                )
            return None
        self._pending = None
        effect = f"{before_count} -> {after_count} threads: {_rate(before)} -> {after:.2f} tok/s"
        if before is not None and after < before * (1 - self.settings.tolerance):
            self._refused[(before_count, after_count)] = now + self.settings.backoff_s
            self.last_change = now
            return ThreadChange(
                before_count, f"{effect}, slower: back to {before_count} for {self.settings.backoff_s:g}s"
            )
        return ThreadChange(None, effect)


def _rate(rate: float | None) -> str:
    return "?" if rate is None else f"{rate:.2f}"
