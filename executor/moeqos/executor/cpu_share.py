"""How much of the machine's CPU other processes take: the QoS loop's view of a noisy neighbour.

    share = CpuShare()          # reads /proc/stat and this process's CPU time
    share.sample()              # call now and then (every loop tick)
    share.others_cores(2.0)     # cores busy with other processes over the last ~2 s; None: unknown

Machine busy time comes from the first line of /proc/stat (all cores, user+nice+system+irq+softirq+
steal), this process's from `time.process_time()` (all its threads); the difference is what the
rest of the machine used. Where /proc/stat cannot be read (not Linux) nothing is known and the loop
leaves the thread count alone. Readers are injected in tests.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable

Reader = Callable[[], float | None]
"""Seconds of CPU time so far (summed over cores); None when it cannot be read."""

_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
"""user, nice, system, irq, softirq, steal in /proc/stat's cpu line (idle and iowait left out)."""


def machine_busy_seconds(path: str = "/proc/stat") -> float | None:
    """CPU seconds the whole machine spent busy since boot, all cores together."""
    try:
        with open(path) as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[1 + i]) for i in _BUSY_FIELDS if 1 + i < len(fields)) / ticks


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class CpuShare:
    """Samples of (wall time, machine busy seconds, own busy seconds), kept for `horizon` seconds."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        machine: Reader = machine_busy_seconds,
        own: Reader = time.process_time,
        cores: int | None = None,
        horizon: float = 10.0,
    ) -> None:
        self.clock = clock
        self.cores = cores or usable_cores()
        self._machine = machine
        self._own = own
        self._horizon = horizon
        self._samples: deque[tuple[float, float, float]] = deque()

    def sample(self) -> None:
        """Take one reading (skipped when the machine's time cannot be read)."""
        machine, own = self._machine(), self._own()
        if machine is None or own is None:
            return
        now = self.clock()
        self._samples.append((now, machine, own))
        while self._samples and self._samples[0][0] < now - self._horizon:
            self._samples.popleft()

    def others_cores(self, seconds: float) -> float | None:
        """Mean cores other processes kept busy from the oldest sample at least `seconds` old (or the
        oldest kept) to the newest; None with fewer than two samples `seconds / 2` apart."""
        if len(self._samples) < 2:
            return None
        newest = self._samples[-1]
        older = [s for s in self._samples if s[0] <= newest[0] - seconds]
        oldest = older[-1] if older else self._samples[0]
        wall = newest[0] - oldest[0]
        if wall < seconds / 2:
            return None
        others = (newest[1] - oldest[1]) - (newest[2] - oldest[2])
        return min(max(others / wall, 0.0), float(self.cores))
