"""Load harness: a planner and two executors as real processes on loopback, N streaming clients, and the
planner re-planning the executors every few seconds while they serve.

    python -m moeqos.bench.load [--duration S] [--clients N] [--model DIR] [--replan-every S] [--json]
    python -m moeqos.bench.load --streams 1,4,8,16 [--level-seconds S]   (moeqos.bench.concurrency)
    python -m moeqos.bench.load --streams 1,4,16 --predict [--plans "SPEC;SPEC"]   (moeqos.bench.batch_error)

Control rounds alternate between a Deploy (alternating speed and quality targets) and a SetBudget on
each executor (alternating a roomy and a tight device budget, which re-plans against the standing target
through the planner). Reported: requests completed, refused (RESOURCE_EXHAUSTED past the bounded queue:
a clean answer, counted apart), failed (anything else, a stream past its deadline or with tokens missing
included: must be 0), p50/p99 time to first token, tokens/s, and the control rounds. Two probes run on
the executor processes (moeqos.bench.load_probes): a slow reader on each, whose slot must be freed about
one write window after it stalls, and each executor's RSS across the plan switches (after the last
within 10% of after the first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moeqos.bench.cluster import Cluster, Service
from moeqos.bench.load_probes import MemoryTrack, open_slow_readers, probe_report, sample_memory, track_memory
from moeqos.bench.load_report import LoadReport, RequestRecord, summarize
from moeqos.client import (
    AsyncExecutorClient,
    AsyncPlannerClient,
    DeploySpec,
    GenerationStats,
    ReplanState,
    Sampling,
)
from moeqos.core.errors import MoeqosError, OverBudget
from moeqos.core.precision import Precision, expert_bytes
from moeqos.core.qos import Objective, QosTarget

PROMPTS = (
    "the quick brown fox",
    "a mixture of experts routes every token",
    "the planner picks a plan that meets the target",
    "hello world, this is a small test",
)
TARGETS = (QosTarget(objective=Objective.SPEED), QosTarget(objective=Objective.QUALITY))
"""Always feasible whatever the budget: they only say what to optimise."""


@dataclass(frozen=True)
class LoadSettings:
    """One load run."""

    duration_s: float = 60.0
    """Seconds of traffic (requests in flight at the end are let finish)."""
    clients: int = 16
    """Concurrent streaming clients, spread over the two executors."""
    model_dir: Path | None = None
    """Checkpoint directory; None: the embedded default model."""
    replan_every_s: float = 5.0
    """Seconds between control rounds."""
    max_tokens: int = 24
    """Tokens per request."""
    max_concurrent: int = 2
    """Generations each executor runs at once."""
    max_queued: int = 4
    """Generations each executor queues; past it requests are refused."""
    stream_timeout_s: float = 180.0
    """A stream not finished by then counts as a failure (hung)."""
    work_dir: Path | None = None
    """Logs and the shared profile; None: a fresh temporary directory."""
    threads: int | None = None
    """torch threads per executor."""
    profile_path: Path | None = None
    """Where the executors keep their measured profile, so a later run need not measure again (it is
    measured anew when the model or device differs); None: in the work directory."""
    write_window_s: float = 5.0
    """Seconds an executor lets a stream's reader leave a message unread (the slow-reader probe)."""


@dataclass
class Control:
    """Outcomes of the control rounds."""

    deploys: int = 0
    budget_changes: int = 0
    failures: list[str] = field(default_factory=list)


def executor_args(settings: LoadSettings, profile: Path) -> list[str]:
    args = ["--max-concurrent", str(settings.max_concurrent), "--max-queued", str(settings.max_queued)]
    args += ["--profile-path", str(profile), "--grace-seconds", "5"]
    args += ["--write-window", str(settings.write_window_s)]
    if settings.model_dir is not None:
        args += ["--model", str(settings.model_dir)]
    if settings.threads is not None:
        args += ["--threads", str(settings.threads)]
    return args


async def one_request(
    client: AsyncExecutorClient, prompt: str, seed: int, settings: LoadSettings
) -> RequestRecord:
    """One streamed request, timed from the call to its first token and to its last event."""
    sampling = Sampling(max_tokens=settings.max_tokens, temperature=0.8, top_k=50, seed=seed)
    start, first, tokens = time.perf_counter(), None, 0
    try:
        async with asyncio.timeout(settings.stream_timeout_s):
            async for event in client.generate(prompt, sampling):
                if event.token_id is not None:
                    tokens += 1
                    first = first or time.perf_counter()
                if event.stats is not None:
                    return _finished(event.stats, tokens, start, first)
        return RequestRecord("failed", error="stream ended without its final statistics")
    except OverBudget:
        return RequestRecord("refused")
    except TimeoutError:
        return RequestRecord("failed", error=f"no answer within {settings.stream_timeout_s:.0f}s")
    except MoeqosError as exc:
        return RequestRecord("failed", error=f"{type(exc).__name__}: {exc}")


def _finished(stats: GenerationStats, tokens: int, start: float, first: float | None) -> RequestRecord:
    if stats.generated_tokens != tokens:
        return RequestRecord("failed", error=f"stats say {stats.generated_tokens} tokens, {tokens} arrived")
    end = time.perf_counter()
    ttft = (first or end) - start
    decode = (tokens - 1) / (end - first) if first is not None and tokens > 1 and end > first else 0.0
    return RequestRecord("completed", ttft, tokens, decode, plan=stats.plan_spec)


async def client_loop(
    index: int, address: str, deadline: float, settings: LoadSettings, records: list[RequestRecord]
) -> None:
    """Send requests back to back until the deadline; after a refusal wait a little (as a client would)."""
    async with AsyncExecutorClient(address) as client:
        n = 0
        while time.monotonic() < deadline:
            record = await one_request(client, PROMPTS[n % len(PROMPTS)], index * 100_000 + n, settings)
            records.append(record)
            n += 1
            if record.outcome == "refused":
                await asyncio.sleep(0.2)


async def control_loop(
    planner: str,
    executors: Sequence[str],
    budgets: tuple[int, int],
    deadline: float,
    every: float,
    control: Control,
    memory: Sequence[MemoryTrack],
) -> None:
    """Alternate Deploy (alternating targets) and SetBudget (alternating budgets) every `every` seconds;
    after each round, sample the executors' memory at their plan switches."""
    round_ = 0
    async with AsyncPlannerClient(planner) as planner_client:
        while time.monotonic() + every < deadline:
            await asyncio.sleep(every)
            try:
                if round_ % 2 == 0:
                    specs = [DeploySpec(a, TARGETS[(round_ // 2) % 2]) for a in executors]
                    await planner_client.deploy(specs, timeout=120.0)
                    control.deploys += 1
                else:
                    await _set_budgets(executors, budgets[(round_ // 2) % 2])
                    control.budget_changes += 1
            except MoeqosError as exc:
                control.failures.append(f"round {round_}: {type(exc).__name__}: {exc}")
            round_ += 1
            await sample_memory(memory)


async def _set_budgets(executors: Sequence[str], budget: int) -> None:
    for address in executors:
        async with AsyncExecutorClient(address) as client:
            await client.set_budget("cpu", budget)


async def device_budgets(address: str) -> tuple[int, int]:
    """(roomy, tight) device budgets: all experts in bf16 fit the first, only about int4 the second."""
    async with AsyncExecutorClient(address) as client:
        model = (await client.info()).model
    count = model.num_layers * model.num_experts

    def total(precision: Precision) -> int:
        return count * expert_bytes(model.hidden_size, model.intermediate_size, precision)

    return int(total(Precision.BF16) * 1.1), int(total(Precision.INT4) * 1.2)


SETTLE_S = 5.0
"""How long requests may take to leave an executor after the traffic is over: a client has its last
message before the server's handler hands its admission slot back (a CI run read `1 running` at once)."""


async def after_the_run(executors: Sequence[str]) -> list[str]:
    """What is wrong once the traffic is over: an executor not SERVING, requests left running or queued
    `SETTLE_S` later, or a standing-target re-plan that failed."""
    problems = []
    for address in executors:
        async with AsyncExecutorClient(address) as client:
            info, health = await client.info(), await client.health()
            settle_by = time.monotonic() + SETTLE_S
            while (info.active_generations or info.queued_generations) and time.monotonic() < settle_by:
                await asyncio.sleep(0.1)
                info = await client.info()
        if health != "SERVING" or info.active_generations or info.queued_generations:
            problems.append(
                f"{address}: {health}, {info.active_generations} running, {info.queued_generations} queued"
            )
        if info.replan_state is ReplanState.FAILED:
            problems.append(f"{address}: re-plan failed: {info.replan_detail}")
    return problems


async def warm_up(executors: Sequence[str]) -> None:
    """Measure the profile on the first executor (saved to the shared path), so the others read it."""
    for address in executors:
        async with AsyncExecutorClient(address) as client:
            await client.get_profile(timeout=None)


async def drive(settings: LoadSettings, planner: str, executors: Sequence[Service]) -> LoadReport:
    """Run the slow readers, then the clients and the control loop for the duration; the report."""
    addresses = [e.address for e in executors]
    await warm_up(addresses)
    budgets = await device_budgets(addresses[0])
    readers, stalled = await open_slow_readers(
        [(e.address, e.port) for e in executors], settings.write_window_s, settings.stream_timeout_s
    )
    try:
        memory = await track_memory([(e.address, e.pid) for e in executors])
        records: list[RequestRecord] = []
        control = Control()
        start = time.monotonic()
        deadline = start + settings.duration_s
        clients = [
            client_loop(i, addresses[i % len(addresses)], deadline, settings, records)
            for i in range(settings.clients)
        ]
        await asyncio.gather(
            control_loop(planner, addresses, budgets, deadline, settings.replan_every_s, control, memory),
            *clients,
        )
        elapsed = time.monotonic() - start
        control.failures += await after_the_run(addresses)  # with the slow readers still connected
    finally:
        for reader in readers:
            reader.close()
    probes = probe_report(settings.write_window_s, stalled, memory)
    return summarize(
        settings.clients, elapsed, records, control.deploys, control.budget_changes, control.failures, probes
    )


def run(settings: LoadSettings) -> LoadReport:
    """Start the cluster, drive the load, stop every process; the report."""
    with tempfile.TemporaryDirectory(prefix="moeqos-load-") as scratch:
        work = settings.work_dir or Path(scratch)
        with Cluster(work, grace_seconds=10.0) as cluster:
            args = executor_args(settings, settings.profile_path or work / "profile.json")
            specs = [
                ("planner", "planner", []),
                ("executor0", "executor", args),
                ("executor1", "executor", args),
            ]
            planner, *executors = cluster.start_many(specs)
            return asyncio.run(drive(settings, planner.address, executors))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moeqos.bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent streaming clients (default 16)")
    parser.add_argument("--model", type=Path, help="model directory (default: the embedded default model)")
    parser.add_argument("--replan-every", type=float, default=5.0, help="seconds between control rounds")
    parser.add_argument("--max-tokens", type=int, default=24, help="tokens per request (default 24)")
    parser.add_argument("--max-concurrent", type=int, default=2, help="generations per executor at once")
    parser.add_argument("--max-queued", type=int, default=4, help="queued per executor; more are refused")
    parser.add_argument("--work", type=Path, help="directory for logs and the profile (default: temporary)")
    parser.add_argument("--threads", type=int, help="torch threads per executor")
    parser.add_argument("--profile", type=Path, help="profile file kept between runs (default: in --work)")
    parser.add_argument(
        "--write-window",
        type=float,
        default=5.0,
        help="seconds a reader may leave a message unread (default 5)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--streams", help="instead: one executor, a level of N concurrent clients for each N, e.g. 1,4,8,16"
    )
    parser.add_argument("--level-seconds", type=float, default=20.0, help="seconds per --streams level")
    parser.add_argument(
        "--predict",
        action="store_true",
        help="with --streams: the throughput model's predicted vs measured tokens/s per (plan, streams)",
    )
    parser.add_argument("--plans", help="with --predict: plans measured, `SPEC;SPEC` (default: three)")
    args = parser.parse_args(argv)
    settings = LoadSettings(
        duration_s=args.duration,
        clients=args.clients,
        model_dir=args.model,
        replan_every_s=args.replan_every,
        max_tokens=args.max_tokens,
        max_concurrent=args.max_concurrent,
        max_queued=args.max_queued,
        work_dir=args.work,
        threads=args.threads,
        profile_path=args.profile,
        write_window_s=args.write_window,
    )
    # A SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the cluster's processes are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.streams and args.predict:
        from moeqos.bench import batch_error, concurrency

        errors = batch_error.main_error(concurrency.parse_streams(args.streams), args.plans, settings)
        print(json.dumps(asdict(errors) | {"mape": errors.mape}, indent=2) if args.json else errors.table())
        return 0
    if args.streams:
        from moeqos.bench import concurrency

        sweep = concurrency.main_sweep(concurrency.parse_streams(args.streams), args.level_seconds, settings)
        print(json.dumps(asdict(sweep), indent=2) if args.json else sweep.table())
        return 0 if sweep.failed == 0 else 1
    report = run(settings)
    print(json.dumps(asdict(report), indent=2) if args.json else report.table())
    return 0 if report.failed == 0 and not report.control_failures and not report.probe_problems else 1


if __name__ == "__main__":
    sys.exit(main())
