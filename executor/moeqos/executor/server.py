"""The executor server: config, assembly, model loading behind the health service, run loop.

The port is bound first (health NOT_SERVING, every RPC UNAVAILABLE), then the model loads and warms up
(one token) in a worker thread, the profile is read (or, with `profile_at_start`, measured), then
health turns SERVING. SIGTERM/SIGINT: NOT_SERVING, new calls
refused, calls in flight get `grace_seconds` to finish.

    config = ExecutorServerConfig.from_env_and_args(args)   # flags and MOEQOS_* read here, only here
    asyncio.run(serve(config))
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc.aio
from moeqos.api import server as server_common
from moeqos.api.metrics import ServerMetrics
from moeqos.api.server import PeerServerConfig, Server, start_server
from moeqos.core.plan import Plan, parse_plan
from moeqos.core.precision import Precision
from moeqos.core.tier import TierBudget
from moeqos.executor.config import BatchLimits, ExecutorConfig, check_settings
from moeqos.executor.cpu_share import CpuShare, NicedThreads
from moeqos.executor.disk_room import check_writable
from moeqos.executor.live_stats import LiveStats
from moeqos.executor.metrics import ExecutorMetrics
from moeqos.executor.qos_control import LoopSettings
from moeqos.executor.qos_loop import QosLoop
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.sampling import SamplingParams
from moeqos.executor.service_admission import Admission
from moeqos.executor.service_measure import MeasureSettings
from moeqos.executor.service_model import ServedModel
from moeqos.executor.service_target import StandingTarget
from moeqos.executor.servicer import ExecutorServicer
from moeqos.executor.thread_knob import ThreadKnob, ThreadSettings
from moeqos.executor.torch_threads import ThreadPerCall, decoding_thread
from moeqos.executor.variant_warmup import VariantWarmup, WarmupSettings
from moeqos.proto.executor.v1 import executor_pb2, executor_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50061"
SERVICE_NAME = executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name
STATE_CHANGING = ("ApplyPlan", "SetBudget", "SetTarget", "MeasureProfile")
"""Methods that need the token whenever one is configured (the rest only with `auth_read`)."""


@dataclass(frozen=True)
class ExecutorServerConfig(PeerServerConfig):
    """Settings of an executor server (the common ones are documented on ServerConfig)."""

    listen: str = DEFAULT_LISTEN
    """`host:port` to bind (port 0 picks a free port)."""
    model_dir: Path | None = None
    """Checkpoint directory; None serves the embedded default model (built on first use)."""
    device: str = "cpu"
    """Execution device (`cpu`, `cuda:0`)."""
    tier_budgets: dict[str, int] = field(default_factory=dict)
    """Expert bytes per tier; a tier left out gets its physical size (ExecutorConfig.tier_budgets;
    flag `--budget`, environment MOEQOS_BUDGETS)."""
    disk_pool_slots: int = 8
    """Experts of the disk tier resident at once (ExecutorConfig.disk_pool_slots; flag `--disk-slots`,
    environment MOEQOS_DISK_SLOTS)."""
    disk_reads: str = "cached"
    """`cached` or `uncached` reads of disk-tier experts (see ExecutorConfig.disk_reads)."""
    dense_precision: str = "bf16"
    """Precision of the non-expert weights (fp32, bf16, fp16)."""
    initial_plan: str | None = None
    """Plan to serve first (text form or JSON); None lets the runtime choose."""
    name: str = ""
    """Name reported by GetInfo; empty: the host name."""
    planner_address: str | None = None
    """Planner asked for a new plan when a budget changes under a standing target (Deploy may set it)."""
    max_concurrent: int = 16
    """Generations running at once, decoded together: the batch size (moeqos.executor.batch_scheduler)."""
    max_queued: int = 16
    """Generations waiting for a slot; more are refused with RESOURCE_EXHAUSTED."""
    max_tokens_in_flight: int = BatchLimits.max_tokens
    """KV tokens the running generations reserve at most, each its prompt plus its max_tokens
    (BatchLimits.max_tokens; flag `--max-tokens-in-flight`, environment MOEQOS_MAX_TOKENS_IN_FLIGHT)."""
    write_window_s: float = 30.0
    """Seconds a stream's reader may leave a message unread before the stream is cancelled and its
    generation slot freed (moeqos.executor.stream_watch)."""
    threads: int | None = None
    """torch intra-op threads; None: torch's default."""
    variant_cache_dir: Path | None = None
    """Where quantized expert variants are kept on disk; None: a private temporary directory."""
    replan_backoff: tuple[float, float] = (0.2, 10.0)
    """First and longest wait, in seconds, between re-plan attempts while the planner is unreachable."""
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    """What a profile measurement covers."""
    state_path: Path | None = None
    """JSON file where the plan, budgets and standing target are saved after each change and restored
    from at start (they win over `initial_plan` and `budgets`); None: nothing is kept across restarts."""
    profile_path: Path | None = None
    """Profile JSON written after each measurement and served at the next start when it was measured
    on the same model (fingerprint) and device, so a restart need not measure again."""
    profile_at_start: bool = False
    """Measure the profile (unless a saved one matches) before health turns SERVING; either way a saved
    profile is read before SERVING, so the QoS loop can recalibrate from the first generation."""
    qos: LoopSettings = field(default_factory=LoopSettings)
    """The closed loop keeping a standing floor (`enabled=False`: open loop, measured only)."""
    warmup: WarmupSettings = field(default_factory=WarmupSettings)
    """Variants of the profile's precisions built ahead once serving (moeqos.executor.variant_warmup;
    flag `--warm-variants on|off`, environment MOEQOS_WARM_VARIANTS)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_concurrent < 1 or self.max_queued < 0 or self.max_tokens_in_flight < 1:
            raise ValueError("need max_concurrent >= 1, max_queued >= 0 and max_tokens_in_flight >= 1")
        if self.write_window_s <= 0:
            raise ValueError(f"write_window_s must be positive, got {self.write_window_s}")
        if self.planner_address is not None:
            server_common.check_address("planner", self.planner_address)
        if not 0 < self.replan_backoff[0] <= self.replan_backoff[1]:
            raise ValueError(f"replan_backoff must be 0 < first <= longest, got {self.replan_backoff}")
        if self.model_dir is not None and not (Path(self.model_dir) / "config.json").is_file():
            raise ValueError(f"{self.model_dir}: not a model directory (no config.json)")
        check_settings(
            self.device,
            self.dense_precision,
            self.tier_budgets,
            self.disk_pool_slots,
            self.disk_reads,
            self.threads,
        )
        if self.variant_cache_dir is not None:
            check_writable(Path(self.variant_cache_dir))

    def runtime_config(self, model_dir: Path) -> ExecutorConfig:
        return ExecutorConfig(
            model_dir=model_dir,
            device=self.device,
            dense_precision=Precision.parse(self.dense_precision),
            tier_budgets=dict(self.tier_budgets),
            disk_pool_slots=self.disk_pool_slots,
            disk_reads=self.disk_reads,
            variant_cache_dir=self.variant_cache_dir,
            threads=self.threads,
            batch=BatchLimits(max_batch=self.max_concurrent, max_tokens=self.max_tokens_in_flight),
        )

    @classmethod
    def from_env_and_args(
        cls, args: Any = None, env: Mapping[str, str] | None = None
    ) -> ExecutorServerConfig:
        """The config from parsed CLI flags (which win) and MOEQOS_* environment variables."""
        env = server_common.env() if env is None else env

        def pick(flag: str, var: str) -> Any:
            value = getattr(args, flag, None)
            return value if value is not None else env.get(var)

        def number(flag: str, var: str, default: int | None) -> Any:
            """An integer setting, `default` when neither gives one (0 is a value, not an absence)."""
            value = pick(flag, var)
            return default if value is None or value == "" else int(value)

        def seconds(flag: str, var: str, default: float) -> float:
            """A duration setting, `default` when neither gives one (0 is a value, refused as such)."""
            value = pick(flag, var)
            return default if value is None or value == "" else float(value)

        model = pick("model", "MOEQOS_MODEL")
        cache = pick("variant_cache", "MOEQOS_VARIANT_CACHE")
        profile = pick("profile_path", "MOEQOS_PROFILE_PATH")
        state = pick("state_path", "MOEQOS_STATE_PATH")
        return cls(
            **server_common.common_settings(args, env, DEFAULT_LISTEN),
            **server_common.peer_settings(args, env),
            model_dir=Path(model) if model else None,
            device=pick("device", "MOEQOS_DEVICE") or "cpu",
            tier_budgets=_budgets(getattr(args, "budget", None), env.get("MOEQOS_BUDGETS", "")),
            disk_pool_slots=number("disk_slots", "MOEQOS_DISK_SLOTS", 8),
            disk_reads=pick("disk_reads", "MOEQOS_DISK_READS") or "cached",
            dense_precision=pick("dense_precision", "MOEQOS_DENSE_PRECISION") or "bf16",
            initial_plan=pick("initial_plan", "MOEQOS_INITIAL_PLAN"),
            name=pick("name", "MOEQOS_NAME") or "",
            planner_address=pick("planner", "MOEQOS_PLANNER"),
            max_concurrent=number("max_concurrent", "MOEQOS_MAX_CONCURRENT", 16),
            max_queued=number("max_queued", "MOEQOS_MAX_QUEUED", 16),
            max_tokens_in_flight=number(
                "max_tokens_in_flight", "MOEQOS_MAX_TOKENS_IN_FLIGHT", BatchLimits.max_tokens
            ),
            write_window_s=seconds("write_window", "MOEQOS_WRITE_WINDOW_S", 30.0),
            threads=number("threads", "MOEQOS_THREADS", None),
            variant_cache_dir=Path(cache) if cache else None,
            profile_path=Path(profile) if profile else None,
            state_path=Path(state) if state else None,
            profile_at_start=_yes(pick("profile_at_start", "MOEQOS_PROFILE_AT_START")),
            qos=LoopSettings(
                enabled=_on_off(pick("qos_loop", "MOEQOS_QOS_LOOP") or "on", "qos loop"),
                threads=ThreadSettings(
                    enabled=_on_off(pick("qos_threads", "MOEQOS_QOS_THREADS") or "on", "qos threads")
                ),
            ),
            warmup=WarmupSettings(
                enabled=_on_off(pick("warm_variants", "MOEQOS_WARM_VARIANTS") or "on", "warm variants")
            ),
        )


def _yes(value: object) -> bool:
    """A flag's True, or an environment variable's `1`, `true`, `on`, `yes`."""
    return value is True or str(value).lower() in ("1", "true", "on", "yes")


def _on_off(value: str, what: str) -> bool:
    if value not in ("on", "off"):
        raise ValueError(f"{what} must be on or off, got {value!r}")
    return value == "on"


def _budgets(flags: list[TierBudget] | None, env_value: str) -> dict[str, int]:
    """Budgets from `--budget` flags, else from MOEQOS_BUDGETS (`cpu=2GiB,disk=20GiB`)."""
    from moeqos.core.units import parse_budget

    chosen = flags or [parse_budget(part) for part in env_value.split(",") if part.strip()]
    return {b.name: b.budget_bytes for b in chosen}


@dataclass
class ExecutorHandle:
    """A started executor server: the gRPC server, its servicer, and the model-loading task."""

    server: Server
    servicer: ExecutorServicer
    pool: Executor
    """Plan switches and other work off the decode path, each on its own thread (torch_threads)."""
    decoding: ThreadPoolExecutor
    """The one thread that loads the model and runs every decode step (torch_threads)."""
    ready: asyncio.Task[None]
    """Done once the model is loaded and warm (health SERVING); raises if loading failed."""
    warmup: VariantWarmup | None = None
    """Builds the profile's variants ahead once serving (stopped before the variant cache goes)."""

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, let calls in flight finish for `grace` seconds."""
        self.ready.cancel()
        if self.servicer.qos is not None:
            self.servicer.qos.stop()
        self.servicer.target.cancel()
        await self.server.stop(grace)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.decoding.shutdown(wait=False, cancel_futures=True)
        if self.warmup is not None:
            await asyncio.to_thread(self.warmup.stop)  # nothing written into a removed cache
        self.servicer.served.close()  # removes the runtime's private variant directory


def load_runtime(config: ExecutorServerConfig) -> ExecutorRuntime:
    """Load the model, apply the initial plan, and warm up with one generated token (blocking)."""
    from moeqos.executor.default_model.location import resolve_model_dir

    runtime = ExecutorRuntime.load(config.runtime_config(resolve_model_dir(config.model_dir, progress=False)))
    if config.initial_plan:
        plan = parse_plan(config.initial_plan, runtime.num_layers, runtime.num_experts, config.device)
        runtime.apply_plan(plan)
    for _ in runtime.generate([0], SamplingParams(max_tokens=1)):
        pass
    return runtime


async def start_executor(
    config: ExecutorServerConfig, loader: Callable[[ExecutorServerConfig], ExecutorRuntime] = load_runtime
) -> ExecutorHandle:
    """Bind and start the server now; load the model in the background (see ExecutorHandle.ready)."""
    pool, decode_thread = ThreadPerCall("executor"), decoding_thread()
    metrics = ServerMetrics()
    executor_metrics = ExecutorMetrics(metrics.registry)
    served = ServedModel(pool, config.measure, config.profile_path, executor_metrics, decode_thread)
    target = StandingTarget(
        config.planner_address or "", config.peer_options(), served, config.replan_backoff
    )
    admission = Admission(config.max_concurrent, config.max_queued)

    def plan() -> Plan:  # asked only once the model is loaded (by generations, GetInfo, the loop)
        return served.ready().plan

    def knob() -> ThreadKnob | None:  # None until the model is loaded
        return served.runtime.threads if served.runtime is not None else None

    def decoding() -> bool:  # generations running: the build ahead waits for them
        return served.runtime is not None and served.runtime.scheduler.active > 0

    warmup = VariantWarmup(lambda: served.ready().factory, config.device, config.warmup, busy=decoding)
    qos = QosLoop(
        config.qos,
        LiveStats(plan, threads=lambda: served.ready().threads.wanted),
        target,
        plan,
        knob,
        CpuShare(own_niced=NicedThreads()),
    )
    target.planning_target = qos.planning_target  # re-plans ask with headroom,
    target.planning_fallbacks = qos.planning_fallbacks  # the loop's: then the fallback stages at once,
    target.planning_profile = qos.calibrated  # from the live-calibrated profile,
    target.planning_refusal = qos.planning_refusal  # and never a slower plan for a violation
    servicer = ExecutorServicer(
        config.name or socket.gethostname(),
        served,
        admission,
        target,
        write_window_s=config.write_window_s,
        state_path=config.state_path,
        qos=qos,
        variants_ahead=warmup.describe,
    )
    executor_metrics.observe(served, target)

    def register(server: grpc.aio.Server) -> None:
        executor_pb2_grpc.add_ExecutorServiceServicer_to_server(servicer, server)

    server = await start_server(config, register, (SERVICE_NAME,), STATE_CHANGING, metrics)

    async def load() -> None:
        runtime = await served.decode(loader, config)  # the decode thread's OpenMP team, warm from here
        served.attach(runtime)
        await servicer.restore()
        if config.profile_at_start:
            log.info("executor %s measuring its profile before serving", servicer.name)
        await served.warm_profile(config.profile_at_start)
        qos.start(lambda: served.measured_profile)
        await server.set_serving(True)
        log.info("executor %s serving %s on port %d", servicer.name, runtime.model.name, server.port)
        served.on_profile = warmup.start  # serving and profiled: variants built ahead from now on
        if served.measured_profile is not None:
            warmup.start(served.measured_profile)

    ready = asyncio.get_running_loop().create_task(load())
    return ExecutorHandle(server, servicer, pool, decode_thread, ready, warmup)


async def serve(config: ExecutorServerConfig, on_started: Callable[[int], None] | None = None) -> None:
    """Run an executor until SIGTERM or SIGINT (or a failed model load), then stop gracefully."""
    handle = await start_executor(config)
    if on_started is not None:
        on_started(handle.port)
    stop = asyncio.ensure_future(server_common.wait_for_signal())
    try:
        await asyncio.wait({stop, handle.ready}, return_when=asyncio.FIRST_COMPLETED)
        if handle.ready.done() and handle.ready.exception() is not None:
            raise handle.ready.exception()  # type: ignore[misc]
        await stop
    finally:
        stop.cancel()
        await handle.stop(config.grace_seconds)
