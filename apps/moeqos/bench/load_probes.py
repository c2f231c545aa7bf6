"""Two checks the load harness (moeqos.bench.load) runs on its executor processes (issue 16, cases 3
and 7): a slow reader on each executor, and each executor's memory across the run's plan switches.

- Slow reader: before the traffic starts, a raw HTTP/2 client that never opens its window
  (moeqos.bench.slow_reader) starts a Generate on each executor. The probe measures how long the
  stalled stream holds its generation slot (GetInfo's active count, nobody else sending yet); it must
  be freed about one write window later. The readers stay connected through the run, so the run's
  own figures (nothing failed, no slot left held at the end) are measured with them in place.
- Memory: each executor process's resident set (VmRSS) after every control round; its RSS after the
  last plan switch must stay within 10% of its RSS after the first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from moeqos.bench.slow_reader import SlowReader
from moeqos.client import AsyncExecutorClient, Sampling
from moeqos.client.executor import generate_request

GENERATE = "/moeqos.executor.v1.ExecutorService/Generate"
RSS_GROWTH_LIMIT = 1.10
"""Most RSS after the last switch may be, as a multiple of RSS after the first (the issue's goal)."""


@dataclass(frozen=True)
class SlowReaderOutcome:
    """One executor's slow reader."""

    address: str
    held_s: float | None
    """Seconds from the stalled stream taking a slot to the slot being free; None: never freed."""


@dataclass
class MemoryTrack:
    """One executor process's RSS at its plan switches."""

    address: str
    pid: int
    applied_at: datetime | None
    """When the plan last seen was applied (GetInfo): a new value is a plan switch."""
    switches: int = 0
    first_mib: float = 0.0
    """RSS after the first switch."""
    last_mib: float = 0.0
    """RSS after the last switch."""


@dataclass(frozen=True)
class ProbeReport:
    """What the probes found."""

    write_window_s: float
    slow_readers: tuple[SlowReaderOutcome, ...]
    memory: tuple[tuple[str, int, float, float], ...]
    """(executor, switches, RSS MiB after the first switch, after the last) per executor."""

    def problems(self) -> tuple[str, ...]:
        """Slow readers that kept their slot past twice the window, executors whose RSS grew past the limit."""
        found = [
            f"{r.address}: a slow reader held its slot {'for good' if r.held_s is None else f'{r.held_s:.1f} s'}"
            f" (write window {self.write_window_s:.1f} s)"
            for r in self.slow_readers
            if r.held_s is None or r.held_s > 2 * self.write_window_s
        ]
        found += [
            f"{address}: RSS {first:.0f} -> {last:.0f} MiB over {switches} plan switches"
            f" (limit {RSS_GROWTH_LIMIT:.2f}x)"
            for address, switches, first, last in self.memory
            if switches >= 2 and last > RSS_GROWTH_LIMIT * first
        ]
        return tuple(found)

    def rows(self) -> list[tuple[str, str]]:
        """Rows for the load report's table."""
        held = ", ".join(
            "never freed" if r.held_s is None else f"{r.held_s:.1f} s" for r in self.slow_readers
        )
        rows = [(f"slow reader slot freed after (window {self.write_window_s:.1f} s)", held)]
        rows += [
            (
                f"RSS {address}: after switch 1 / {switches}",
                f"{first:.0f} / {last:.0f} MiB ({last / first:.2f}x)",
            )
            for address, switches, first, last in self.memory
            if first > 0
        ]
        return rows


def rss_mib(pid: int) -> float:
    """Resident set of process `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"/proc/{pid}/status has no VmRSS")


async def open_slow_readers(
    executors: Sequence[tuple[str, int]], window_s: float, timeout_s: float
) -> tuple[list[SlowReader], list[SlowReaderOutcome]]:
    """Start one never-read Generate per `(address, port)` and time each slot's release; the readers
    are returned still connected (close them after the run)."""
    request = generate_request("the quick brown fox", Sampling(max_tokens=200)).SerializeToString()
    readers = [await asyncio.to_thread(SlowReader, port, GENERATE, request) for _, port in executors]
    outcomes = await asyncio.gather(*(_slot_held(address, timeout_s) for address, _ in executors))
    return readers, list(outcomes)


async def _slot_held(address: str, timeout_s: float) -> SlowReaderOutcome:
    async with AsyncExecutorClient(address) as client:
        deadline = time.monotonic() + timeout_s
        while (await client.info()).active_generations == 0:
            if time.monotonic() > deadline:
                return SlowReaderOutcome(address, None)
            await asyncio.sleep(0.05)
        taken = time.monotonic()
        while (await client.info()).active_generations > 0:
            if time.monotonic() > deadline:
                return SlowReaderOutcome(address, None)
            await asyncio.sleep(0.05)
        return SlowReaderOutcome(address, time.monotonic() - taken)


async def track_memory(executors: Sequence[tuple[str, int]]) -> list[MemoryTrack]:
    """Start following each `(address, pid)` executor's plan switches from the plan it serves now."""
    tracks = []
    for address, pid in executors:
        async with AsyncExecutorClient(address) as client:
            tracks.append(MemoryTrack(address, pid, (await client.info()).plan_applied_at))
    return tracks


async def sample_memory(tracks: Sequence[MemoryTrack]) -> None:
    """After a control round: if an executor switched plans since the last sample, count it and take
    its RSS."""
    for track in tracks:
        async with AsyncExecutorClient(track.address) as client:
            applied_at = (await client.info()).plan_applied_at
        if applied_at == track.applied_at:
            continue
        track.applied_at = applied_at
        track.switches += 1
        track.last_mib = rss_mib(track.pid)
        if track.switches == 1:
            track.first_mib = track.last_mib


def probe_report(
    window_s: float, readers: Sequence[SlowReaderOutcome], tracks: Sequence[MemoryTrack]
) -> ProbeReport:
    """The probes' findings, ready for the load report."""
    memory = tuple((t.address, t.switches, t.first_mib, t.last_mib) for t in tracks)
    return ProbeReport(window_s, tuple(readers), memory)
