"""The throughput model's error at a concurrency: predicted vs measured tokens/s for (plan, streams)
pairs on one executor process (issue 15's goal: < 10% mean absolute percentage error).

    python -m moeqos.bench.load --streams 1,4,16 --predict [--plans "SPEC;SPEC"] [--max-tokens N]

The executor measures its profile first (MeasureProfile, latency only; the `batch` stage's seconds are
reported), serving its start plan, which is not among the plans measured, so every pair is held out:
its plan was never timed whole, and the batch steps the model interpolates were timed at other plans.
For each plan (ApplyPlan) and each level of N streams, `repeats` bursts of N greedy requests of
`max_tokens` tokens start together. Streams may join the batch over several steps (those arriving
together prefill together, a late one in a later step), so the measurement
window opens when the last stream has its first token (every stream decoding, one token per step each)
and closes when the first stream has its last: measured aggregate = tokens arriving in the window /
its seconds, per stream = aggregate / N (the best burst of the repeats: load only ever slows a step).
The prediction is the planner's latency model at N streams (moeqos.planner.batch_model) for the plan
served, from that profile. Both rates share the factor N, so their errors are the same number.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from moeqos.bench.cluster import Cluster
from moeqos.bench.load import PROMPTS, LoadSettings
from moeqos.client import AsyncExecutorClient, Sampling
from moeqos.core.plan import parse_plan
from moeqos.core.profile import Profile
from moeqos.planner.latency_model import LatencyModel

DEFAULT_PLANS = ("bf16@cpu", "int8@cpu", "int4g32@cpu,L0-14.E*=int8")
"""Held-out plans of the default model (30 layers): 16-bit, 8-bit, and half int8 / half int4g32."""
START_PLAN = "int4@cpu"
"""The plan the executor serves while it measures its profile (none of the measured plans)."""


@dataclass(frozen=True)
class ErrorSettings:
    """One error run."""

    streams: tuple[int, ...] = (1, 4, 16)
    plans: tuple[str, ...] = DEFAULT_PLANS
    repeats: int = 2
    """Bursts per (plan, streams) pair; the fastest counts."""
    load: LoadSettings = field(default_factory=lambda: LoadSettings(max_tokens=48))
    """Tokens per request, model, threads, work directory."""

    def __post_init__(self) -> None:
        if not self.streams or min(self.streams) < 1 or self.repeats < 1 or not self.plans:
            raise ValueError(f"need levels of >= 1 stream, >= 1 repeat and a plan, got {self}")
        if self.load.max_tokens <= max(self.streams) + 2:
            raise ValueError("max_tokens must exceed the largest level by 3 (the window opens after it)")


@dataclass(frozen=True)
class Pair:
    """One held-out (plan, streams) pair."""

    plan: str
    streams: int
    predicted: float
    """Per-stream tokens/s the latency model predicts."""
    measured: float
    """Per-stream tokens/s in the best burst's window."""

    @property
    def error(self) -> float:
        """|predicted - measured| / measured."""
        return abs(self.predicted - self.measured) / self.measured


@dataclass(frozen=True)
class ErrorReport:
    pairs: tuple[Pair, ...]
    profile_seconds: float
    """Wall seconds of the whole (latency-only) profile measurement."""
    batch_stage_seconds: float
    """Of them, the `batch` stage's."""

    @property
    def mape(self) -> float:
        return statistics.mean(p.error for p in self.pairs)

    def table(self) -> str:
        lines = [
            f"profile {self.profile_seconds:.1f} s, of which the batch stage {self.batch_stage_seconds:.1f} s",
            "plan                              streams  per-stream pred  meas  aggregate pred  meas   error",
        ]
        for p in self.pairs:
            lines.append(
                f"{p.plan[:32]:<32}  {p.streams:>7}  {p.predicted:>15.2f}  {p.measured:>4.2f}"
                f"  {p.streams * p.predicted:>14.2f}  {p.streams * p.measured:>5.2f}  {p.error:>6.1%}"
            )
        lines.append(
            f"MAPE {self.mape:.1%} over {len(self.pairs)} held-out (plan, streams) pairs (goal < 10%)"
        )
        return "\n".join(lines)


async def burst(address: str, streams: int, tokens: int, seed: int) -> float:
    """Per-stream tokens/s of `streams` requests started together, in the all-decoding window."""
    arrivals: list[list[float]] = [[] for _ in range(streams)]

    async def one(index: int) -> None:
        sampling = Sampling(max_tokens=tokens, temperature=0.0, seed=seed + index)
        async with AsyncExecutorClient(address) as client:
            async for event in client.generate(PROMPTS[index % len(PROMPTS)], sampling):
                if event.token_id is not None:
                    arrivals[index].append(time.perf_counter())

    await asyncio.gather(*(one(i) for i in range(streams)))
    return window_rate(arrivals)


def window_rate(arrivals: Sequence[Sequence[float]]) -> float:
    """Per-stream tokens/s from each stream's token arrival times, counted in the window where every
    stream decodes: after the last stream's first token, up to the first stream's last token."""
    opens = max(times[0] for times in arrivals)
    closes = min(times[-1] for times in arrivals)
    count = sum(1 for times in arrivals for t in times if opens < t <= closes)
    if closes <= opens or count == 0:
        raise RuntimeError(f"no window where all {len(arrivals)} streams decoded (a stream ended too early)")
    return count / (closes - opens) / len(arrivals)


async def measure_profile(address: str) -> tuple[Profile, float, float]:
    """Measure the profile again (latency only): it, its seconds and the batch stage's seconds. Each
    stage's seconds (every interval ending in one of its progress events) are noted as the next stage
    reports, so a run cut short still says where the time went."""
    async with AsyncExecutorClient(address) as client:
        start = last = time.perf_counter()
        seconds: dict[str, float] = {}
        async for event in client.measure_profile(timeout=None):
            now = time.perf_counter()
            if isinstance(event, Profile):
                _note_stage(seconds)
                return event, now - start, seconds.get("batch", 0.0)
            if seconds and event.stage not in seconds:
                _note_stage(seconds)
            seconds[event.stage] = seconds.get(event.stage, 0.0) + now - last
            last = now
    raise RuntimeError("MeasureProfile ended without a profile")


async def drive(address: str, settings: ErrorSettings) -> ErrorReport:
    async with AsyncExecutorClient(address) as client:
        info = await client.info()
        shape = (info.model.num_layers, info.model.num_experts, info.hardware.device)
        await client.apply_plan(parse_plan(START_PLAN, *shape), timeout=None)
    profile, seconds, batch_seconds = await measure_profile(address)
    _note(f"profile {seconds:.1f} s, of which the batch stage {batch_seconds:.1f} s")
    model = LatencyModel.fit(profile)
    pairs = []
    for spec in settings.plans:
        plan = parse_plan(spec, *shape)
        async with AsyncExecutorClient(address) as client:
            await client.apply_plan(plan, timeout=None)
        await burst(address, 1, 4, 0)  # first touch of the plan's weights, untimed
        for streams in settings.streams:
            runs = [
                await burst(address, streams, settings.load.max_tokens, r) for r in range(settings.repeats)
            ]
            predicted = model.at_concurrency(streams).predict_tokens_per_s(plan)
            pairs.append(Pair(spec, streams, predicted, max(runs)))
            _note(
                f"{spec} at {streams} streams: predicted {predicted:.2f}, measured {max(runs):.2f} tok/s per stream"
            )
    return ErrorReport(tuple(pairs), seconds, batch_seconds)


def _note_stage(seconds: dict[str, float]) -> None:
    """Note the last stage timed so far (dicts keep their order)."""
    stage = next(reversed(seconds))
    _note(f"profile stage {stage}: {seconds[stage]:.1f} s")


def _note(line: str) -> None:
    """Progress on stderr as each part is measured, so a run cut short still shows what it measured."""
    print(line, file=sys.stderr, flush=True)


def run(settings: ErrorSettings) -> ErrorReport:
    """Start one executor batching up to the largest level, measure every pair, stop it."""
    largest = max(settings.streams)
    args = ["--max-concurrent", str(largest), "--max-queued", str(largest), "--grace-seconds", "5"]
    if settings.load.model_dir is not None:
        args += ["--model", str(settings.load.model_dir)]
    if settings.load.threads is not None:
        args += ["--threads", str(settings.load.threads)]
    with tempfile.TemporaryDirectory(prefix="moeqos-batch-error-") as scratch:
        work = settings.load.work_dir or Path(scratch)
        with Cluster(work, grace_seconds=10.0) as cluster:
            (executor,) = cluster.start_many([("executor0", "executor", args)])
            return asyncio.run(drive(executor.address, settings))


def parse_plans(text: str | None) -> tuple[str, ...]:
    """`SPEC;SPEC` -> the specs (None: DEFAULT_PLANS)."""
    return tuple(p.strip() for p in text.split(";") if p.strip()) if text else DEFAULT_PLANS


def main_error(streams: Sequence[int], plans: str | None, load: LoadSettings) -> ErrorReport:
    return run(ErrorSettings(tuple(streams), parse_plans(plans), load=load))
