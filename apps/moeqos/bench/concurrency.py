"""The load harness's concurrency sweep: one executor as a real process, N streaming clients at each
level N, no re-planning, so the figures show what continuous batching buys.

    python -m moeqos.bench.load --streams 1,4,8,16 [--level-seconds S] [--max-tokens N] [--json]

Per level: aggregate tokens/s (every token streamed over the level's wall time), per-stream decode
tokens/s (median over requests, after their first token), time to first token p50/p99, requests
refused (RESOURCE_EXHAUSTED) and failed; and each level's aggregate and per-stream rates as ratios to
the first level's. The executor batches up to the largest level and queues as many again, so no level
should see a refusal.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from moeqos.bench.cluster import Cluster
from moeqos.bench.load import LoadSettings, client_loop, one_request
from moeqos.bench.load_report import LoadReport, RequestRecord, summarize
from moeqos.client import AsyncExecutorClient


@dataclass(frozen=True)
class SweepSettings:
    """One sweep."""

    streams: tuple[int, ...] = (1, 4, 8, 16)
    """Concurrent clients of each level, in order; the first is the baseline of the ratios."""
    level_seconds: float = 20.0
    """Seconds of traffic per level (requests in flight at the end are let finish)."""
    load: LoadSettings = field(default_factory=LoadSettings)
    """Tokens per request, model, threads, work directory (its clients and replan fields unused)."""

    def __post_init__(self) -> None:
        if not self.streams or min(self.streams) < 1 or self.level_seconds <= 0:
            raise ValueError(f"need levels of >= 1 stream and a positive duration, got {self}")


@dataclass(frozen=True)
class Level:
    """What one level measured."""

    streams: int
    report: LoadReport


@dataclass(frozen=True)
class SweepReport:
    levels: tuple[Level, ...]
    max_batch: int
    max_queued: int

    @property
    def failed(self) -> int:
        return sum(level.report.failed for level in self.levels)

    def table(self) -> str:
        base = self.levels[0].report
        header = "streams  agg tok/s  x base  per-stream tok/s  x base  TTFT p50/p99 s  done  refused  failed"
        lines = [f"executor: batch {self.max_batch}, queue {self.max_queued}", header]
        for level in self.levels:
            r = level.report
            lines.append(
                f"{level.streams:>7}  {r.tokens_per_s:>9.1f}  {_ratio(r.tokens_per_s, base.tokens_per_s):>6}"
                f"  {r.request_tokens_per_s_p50:>16.1f}"
                f"  {_ratio(r.request_tokens_per_s_p50, base.request_tokens_per_s_p50):>6}"
                f"  {r.ttft_p50_s:>6.3f}/{r.ttft_p99_s:<7.3f}  {r.completed:>4}  {r.refused:>7}  {r.failed:>6}"
            )
        lines += [f"failure: {text}" for level in self.levels for text in level.report.failures]
        return "\n".join(lines)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "-"


async def level(address: str, streams: int, settings: SweepSettings) -> Level:
    """`streams` clients sending requests back to back for the level's seconds; what they saw."""
    records: list[RequestRecord] = []
    start = time.monotonic()
    deadline = start + settings.level_seconds
    await asyncio.gather(*(client_loop(i, address, deadline, settings.load, records) for i in range(streams)))
    return Level(streams, summarize(streams, time.monotonic() - start, records, 0, 0, ()))


async def drive(address: str, settings: SweepSettings, max_batch: int, max_queued: int) -> SweepReport:
    async with AsyncExecutorClient(address) as client:  # first touch of every weight, before timing
        await one_request(client, "warm up", 0, settings.load)
    levels = [await level(address, n, settings) for n in settings.streams]
    return SweepReport(tuple(levels), max_batch, max_queued)


def run(settings: SweepSettings) -> SweepReport:
    """Start one executor, sweep the levels, stop it; the report."""
    max_batch = max(settings.streams)
    args = ["--max-concurrent", str(max_batch), "--max-queued", str(max_batch), "--grace-seconds", "5"]
    if settings.load.model_dir is not None:
        args += ["--model", str(settings.load.model_dir)]
    if settings.load.threads is not None:
        args += ["--threads", str(settings.load.threads)]
    with tempfile.TemporaryDirectory(prefix="moeqos-sweep-") as scratch:
        work = settings.load.work_dir or Path(scratch)
        with Cluster(work, grace_seconds=10.0) as cluster:
            (executor,) = cluster.start_many([("executor0", "executor", args)])
            return asyncio.run(drive(executor.address, settings, max_batch, max_batch))


def parse_streams(text: str) -> tuple[int, ...]:
    """`1,4,8,16` -> (1, 4, 8, 16)."""
    return tuple(int(part) for part in text.split(",") if part.strip())


def main_sweep(streams: Sequence[int], level_seconds: float, load: LoadSettings) -> SweepReport:
    return run(SweepSettings(tuple(streams), level_seconds, load))
