"""The planner server: config, assembly (servicer + error map + auth + health + reflection), run loop.

config = PlannerServerConfig.from_env_and_args(args)   # flags and MOEQOS_* read here, only here
asyncio.run(serve(config))                               # until SIGTERM/SIGINT, then a graceful stop
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc.aio
from moeqos.api import server as server_common
from moeqos.api.server import PeerServerConfig, Server, start_server
from moeqos.planner.executor_addresses import ExecutorAddresses
from moeqos.planner.servicer import PlannerServicer
from moeqos.planner.work_pool import WorkPool
from moeqos.proto.planner.v1 import planner_pb2, planner_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50051"
SERVICE_NAME = planner_pb2.DESCRIPTOR.services_by_name["PlannerService"].full_name
STATE_CHANGING = ("Deploy",)
"""Methods that need the token whenever one is configured (the rest only with `auth_read`)."""


@dataclass(frozen=True)
class PlannerServerConfig(PeerServerConfig):
    """Settings of a planner server (the common ones are documented on ServerConfig)."""

    listen: str = DEFAULT_LISTEN
    """`host:port` to bind (port 0 picks a free port)."""
    advertise_address: str | None = None
    """Address executors reach this planner at (given to them by Deploy); None: the bound address."""
    workers: int = 2
    """Threads that run solves, so the event loop never blocks."""
    heavy_running: int = 1
    """WhatIf and Frontier calls computing at once (on the solver threads; keep it below `workers` so
    Plan and Deploy always find one free)."""
    heavy_queued: int = 4
    """WhatIf and Frontier calls waiting; more are refused with RESOURCE_EXHAUSTED."""
    executor_allow: tuple[str, ...] = ()
    """Executor addresses callers may name (Plan, Frontier, Deploy); empty: any (naming one needs the
    token when one is set, and the planner's own address is always refused)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.advertise_address is not None:
            server_common.check_address("advertise", self.advertise_address)
        for allowed in self.executor_allow:
            server_common.check_address("executor allow-list", allowed)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.heavy_running < 1 or self.heavy_queued < 0:
            raise ValueError(
                f"need heavy_running >= 1 and heavy_queued >= 0, got {self.heavy_running}, {self.heavy_queued}"
            )

    @classmethod
    def from_env_and_args(cls, args: Any = None, env: Mapping[str, str] | None = None) -> PlannerServerConfig:
        """The config from parsed CLI flags (which win) and MOEQOS_* environment variables."""
        env = server_common.env() if env is None else env
        common = server_common.common_settings(args, env, DEFAULT_LISTEN)
        return cls(
            **common,
            **server_common.peer_settings(args, env),
            advertise_address=getattr(args, "advertise", None) or env.get("MOEQOS_ADVERTISE_ADDRESS"),
            workers=int(getattr(args, "workers", None) or env.get("MOEQOS_PLANNER_WORKERS") or 2),
            executor_allow=tuple(
                a.strip()
                for a in getattr(args, "executor_allow", None)
                or env.get("MOEQOS_EXECUTOR_ALLOW", "").split(",")
                if a.strip()
            ),
        )


async def start_planner(config: PlannerServerConfig) -> tuple[Server, ThreadPoolExecutor]:
    """Start a planner server and mark it SERVING (it needs no warm-up). Returns it and its solver pool."""
    pool = ThreadPoolExecutor(config.workers, thread_name_prefix="planner")
    heavy = WorkPool(pool, config.heavy_running, config.heavy_queued, "what-if/frontier")
    addresses = ExecutorAddresses(config.executor_allow, token_required=config.token is not None)
    servicer = PlannerServicer(
        pool, config.peer_options(), config.advertise_address or "", config.token, heavy, addresses
    )

    def register(server: grpc.aio.Server) -> None:
        planner_pb2_grpc.add_PlannerServiceServicer_to_server(servicer, server)

    server = await start_server(config, register, (SERVICE_NAME,), STATE_CHANGING)
    if not config.advertise_address:
        servicer.advertise_address = server_common.reachable_address(config.listen, server.port)
    addresses.own_port, addresses.own_host = server.port, config.listen.rpartition(":")[0].lower()
    await server.set_serving(True)
    return server, pool


async def serve(config: PlannerServerConfig, on_started: Any = None) -> None:
    """Run a planner until SIGTERM or SIGINT, then stop gracefully (calls in flight get the grace period)."""
    server, pool = await start_planner(config)
    if on_started is not None:
        on_started(server.port)
    log.info("planner serving on port %d", server.port)
    try:
        await server_common.wait_for_signal()
    finally:
        await server.stop(config.grace_seconds)
        pool.shutdown(wait=False, cancel_futures=True)
