"""How much of the machine's CPU other processes take: the QoS loop's view of a noisy neighbour.

    share = CpuShare()          # reads /proc/stat and this process's CPU time
    share.sample()              # call now and then (every loop tick)
    share.others_cores(2.0)     # cores busy with other processes over the last ~2 s; None: unknown

Machine busy time comes from the first line of /proc/stat (all cores, user+system+irq+softirq+steal),
this process's from `time.process_time()` (all its threads); the difference is what the rest of the
machine used. Where /proc/stat cannot be read (not Linux) nothing is known and the loop leaves the
thread count alone. Readers are injected in tests.

Niced work is not busy for us. The reading decides how many threads torch may use; a process with a
higher nice value than ours still runs on a core, but the scheduler gives it a small share of that
core while our threads want it (CFS weights: 15 at nice 19 against our 1024 at nice 0, 110 at nice
10), so counting it as a busy core would hand the core to work that yields it to us anyway. So the
`nice` column (time of processes with a positive nice value) is left out, and so is this process's own
niced time (the threads building variants ahead, moeqos.executor.variant_warmup, and the ones their
parallel ops start, which the `own` reader counts and the machine puts in that column; read per
thread from /proc/self/task by `NicedThreads`). When this process runs niced itself, its own time
lands in that column too and a neighbour's niceness relative to ours cannot be read from /proc/stat:
then the column is counted, as any other busy time.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

Reader = Callable[[], float | None]
"""Seconds of CPU time so far (summed over cores); None when it cannot be read."""

_BUSY_FIELDS = (0, 2, 5, 6, 7)
"""user, system, irq, softirq, steal in /proc/stat's cpu line (idle and iowait left out)."""
_NICE_FIELD = 1


def machine_busy_seconds(path: str = "/proc/stat", nice: bool = True) -> float | None:
    """CPU seconds the whole machine spent busy since boot, all cores together; `nice=False` leaves
    out the time of processes with a positive nice value."""
    try:
        with open(path) as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    counted = _BUSY_FIELDS + ((_NICE_FIELD,) if nice else ())
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[1 + i]) for i in counted if 1 + i < len(fields)) / ticks


def runs_niced() -> bool:
    """Whether this process runs with a positive nice value (then niced time is counted: module
    docstring)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, 0) > 0
    except (AttributeError, OSError):  # not POSIX: nothing niced is told apart
        return True


class NicedThreads:
    """CPU seconds used by this process's threads that run with a positive nice value (Linux:
    /proc/self/task); a thread that ended keeps its last reading (process_time keeps its time too),
    one that started and ended between two readings is not seen (the builders live for minutes)."""

    def __init__(self, tasks: str = "/proc/self/task") -> None:
        self.tasks = Path(tasks)
        self._seen: dict[str, float] = {}

    def __call__(self) -> float | None:
        try:
            tids = os.listdir(self.tasks)
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        for tid in tids:
            try:
                stat = (self.tasks / tid / "stat").read_text()
            except OSError:  # ended since the listing
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on: the name may hold spaces
            if int(fields[16]) > 0:  # field 19, nice
                self._seen[tid] = (int(fields[11]) + int(fields[12])) / ticks  # fields 14, 15: utime, stime
        return sum(self._seen.values())


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
        machine: Reader | None = None,
        own: Reader = time.process_time,
        cores: int | None = None,
        horizon: float = 10.0,
        own_niced: Reader = lambda: 0.0,
        nice_counted: bool | None = None,
    ) -> None:
        """`machine`: the machine's busy seconds (None: /proc/stat, its niced time as `nice_counted`
        says); `own`: this process's CPU seconds; `own_niced`: the part of them spent at a lowered
        priority; `nice_counted`: whether niced time is busy time (None: only when this process runs
        niced; an injected `machine` must read it so)."""
        self.clock = clock
        self.cores = cores or usable_cores()
        self.nice_counted = runs_niced() if nice_counted is None else nice_counted
        """Whether niced time counts as busy (module docstring)."""
        self._machine = machine or (lambda: machine_busy_seconds(nice=self.nice_counted))
        self._own = own if self.nice_counted else (lambda: _less(own(), own_niced()))
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


def _less(total: float | None, part: float | None) -> float | None:
    return None if total is None or part is None else total - part
