"""Plumbing shared by the planner and executor servers: config, auth, TLS, health, reflection, shutdown.

Mechanism only: which methods need a token and which service names to report are given by each server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from moeqos.api.grpc_errors import ErrorInterceptor, Stream, Unary, wrap_handler
from moeqos.api.metrics import MetricsEndpoint, MetricsInterceptor, ServerMetrics, serve_metrics
from moeqos.api.reflection import enable_reflection
from moeqos.core import addresses
from moeqos.core.errors import Unauthenticated

if TYPE_CHECKING:
    from moeqos.api.channel import ConnectOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """Settings every moeqos server has. Subclasses add their own; see `from_env_and_args` in each."""

    listen: str = "127.0.0.1:0"
    """`host:port` to bind; port 0 picks a free port (the bound one is reported)."""
    token: str | None = None
    """Bearer token required on state-changing calls (None: no auth)."""
    auth_read: bool = False
    """Also require the token on read-only calls."""
    tls_cert: Path | None = None
    """PEM server certificate; with `tls_key`, the server speaks TLS only."""
    tls_key: Path | None = None
    """PEM private key of `tls_cert`."""
    tls_client_ca: Path | None = None
    """PEM CA that client certificates must chain to (mutual TLS); needs `tls_cert`."""
    max_message_bytes: int = 64 * 1024 * 1024
    """Largest request or response message, both directions."""
    grace_seconds: float = 10.0
    """On shutdown, how long calls in flight may take to finish before they are cancelled."""
    metrics_listen: str | None = None
    """`host:port` of the Prometheus `/metrics` HTTP endpoint (None: off; port 0 picks a free port)."""

    def __post_init__(self) -> None:
        check_address("listen", self.listen, listen=True)
        if self.metrics_listen is not None:
            check_address("metrics_listen", self.metrics_listen, listen=True)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty")
        if self.auth_read and self.token is None:
            raise ValueError("auth_read needs a token")
        if self.max_message_bytes < 1024 or self.grace_seconds < 0:
            raise ValueError("max_message_bytes must be >= 1024 and grace_seconds >= 0")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS file {path} does not exist")


@dataclass(frozen=True)
class PeerServerConfig(ServerConfig):
    """A server that also calls the other service (the planner its executors, an executor its planner):
    how it reaches it."""

    peer_token: str | None = None
    """Token sent to the other service (None: this server's own token)."""
    peer_tls_ca: Path | None = None
    """PEM CA to verify the other service with; set it to reach it over TLS."""
    peer_tls_cert: Path | None = None
    """PEM client certificate shown to a peer that requires mutual TLS (with `peer_tls_key`)."""
    peer_tls_key: Path | None = None
    """PEM private key of `peer_tls_cert`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_peer_tls(self.peer_tls_ca, self.peer_tls_cert, self.peer_tls_key)

    def peer_options(self) -> ConnectOptions:
        """The client ConnectOptions this server reaches its peers with."""
        from moeqos.api.channel import ConnectOptions

        return ConnectOptions(
            token=self.peer_token or self.token,
            tls_ca=self.peer_tls_ca,
            tls_cert=self.peer_tls_cert,
            tls_key=self.peer_tls_key,
            timeout=PEER_TIMEOUT_S,
        )


PEER_TIMEOUT_S = 60.0
"""Deadline of a server's unary calls to its peer."""


def check_peer_tls(ca: Path | None, cert: Path | None, key: Path | None) -> None:
    """ValueError unless the peer TLS files exist and the client certificate comes with its key."""
    if (cert is None) != (key is None):
        raise ValueError("give both peer_tls_cert and peer_tls_key, or neither")
    for path in (ca, cert, key):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"peer TLS file {path} does not exist")


def check_address(name: str, address: str, listen: bool = False) -> str:
    """`address` if gRPC can dial it (see moeqos.core.addresses), or with `listen` bind it (`host:port`,
    port 0 meaning any free port); else ValueError naming the setting (fail fast at start)."""
    if listen and address.startswith("unix:"):
        raise ValueError(f"{name} address must be host:port, got {address!r}")
    return addresses.check_address(address, f"{name} address", allow_port_zero=listen)


def common_settings(args: Any, env: Mapping[str, str], default_listen: str) -> dict[str, Any]:
    """ServerConfig fields from parsed flags (which win) and MOEQOS_* environment variables."""

    def pick(flag: str, var: str, default: Any = None) -> Any:
        value = getattr(args, flag, None)
        return value if value is not None else env.get(var, default)

    def path(flag: str, var: str) -> Path | None:
        value = pick(flag, var)
        return Path(value) if value else None

    return {
        "listen": pick("listen", "MOEQOS_LISTEN", default_listen),
        "token": pick("token", "MOEQOS_TOKEN") or None,
        "auth_read": bool(getattr(args, "auth_read", False))
        or env.get("MOEQOS_AUTH_READ", "") in ("1", "true"),
        "tls_cert": path("tls_cert", "MOEQOS_TLS_CERT"),
        "tls_key": path("tls_key", "MOEQOS_TLS_KEY"),
        "tls_client_ca": path("tls_client_ca", "MOEQOS_TLS_CLIENT_CA"),
        "max_message_bytes": int(pick("max_message_bytes", "MOEQOS_MAX_MESSAGE_BYTES", 64 * 1024 * 1024)),
        "grace_seconds": float(pick("grace_seconds", "MOEQOS_GRACE_SECONDS", 10.0)),
        "metrics_listen": pick("metrics_listen", "MOEQOS_METRICS_LISTEN") or None,
    }


def peer_settings(args: Any, env: Mapping[str, str]) -> dict[str, Any]:
    """The PeerServerConfig fields (peer_token, peer_tls_ca/cert/key) from `--peer-*` flags (which win)
    and MOEQOS_PEER_* environment variables."""

    def path(name: str) -> Path | None:
        value = getattr(args, f"peer_tls_{name}", None) or env.get(f"MOEQOS_PEER_TLS_{name.upper()}")
        return Path(value) if value else None

    token = getattr(args, "peer_token", None) or env.get("MOEQOS_PEER_TOKEN")
    return {"peer_token": token} | {f"peer_tls_{name}": path(name) for name in ("ca", "cert", "key")}


# ----- auth ---------------------------------------------------------------------------------------
def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of the call's `authorization: Bearer TOKEN` metadata, if it has one. The scheme is
    case-insensitive (RFC 7235 section 2.1), so `bearer TOKEN` counts too."""
    for key, value in metadata or ():
        text = value.decode() if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if key == "authorization" and scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def token_matches(presented: str | None, token: str | None) -> bool:
    """Whether `presented` is `token` (constant time; never when either is missing)."""
    return (
        presented is not None
        and token is not None
        and hmac.compare_digest(presented.encode(), token.encode())
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer TOKEN` on `protected` methods (all methods with `all_methods`).

    Health and reflection stay open so probes and tools work. Must sit inside the ErrorInterceptor so
    its `Unauthenticated` becomes UNAUTHENTICATED.
    """

    def __init__(self, token: str, protected: Iterable[str], all_methods: bool, open_prefixes: Iterable[str]):
        self._token = token
        self._protected = frozenset(protected)
        self._all = all_methods
        self._open = tuple(open_prefixes)

    def _needs_token(self, method: str) -> bool:
        if method.startswith(self._open):
            return False
        return self._all or method.rsplit("/", 1)[-1] in self._protected

    def _authorized(self, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        return token_matches(bearer_token(metadata), self._token)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if not self._needs_token(method) or self._authorized(details.invocation_metadata):
            return handler
        return wrap_handler(handler, _refuse_unary, _refuse_stream)


_TOKEN_NEEDED = "this call needs metadata `authorization: Bearer TOKEN` with the server's token"


def _refuse_unary(_: Unary) -> Unary:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unauthenticated(_TOKEN_NEEDED)

    return refuse


def _refuse_stream(_: Stream) -> Stream:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unauthenticated(_TOKEN_NEEDED)
        yield  # pragma: no cover - unreachable; makes this an async generator like the handler it replaces

    return refuse


# ----- server assembly ----------------------------------------------------------------------------
@dataclass
class Server:
    """A started gRPC server, the port it bound, and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    metrics: ServerMetrics
    metrics_endpoint: MetricsEndpoint | None = None
    """The `/metrics` HTTP endpoint, when the config's `metrics_listen` asked for one."""

    async def set_serving(self, serving: bool) -> None:
        """Report every service (and the whole server, name "") as SERVING or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let calls in flight finish for up to `grace` seconds, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    pair = (Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def _bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """The port bound at `listen`; OSError with a plain message when it cannot be (e.g. in use)."""
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError:  # grpcio raises this, not OSError, when the bind fails
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {listen}: the address is in use or not available here")
    return port


async def start_server(
    config: ServerConfig,
    register: Callable[[grpc.aio.Server], None],
    service_names: tuple[str, ...],
    protected_methods: Iterable[str],
    metrics: ServerMetrics | None = None,
) -> Server:
    """Build, bind and start a server with metrics, the error map, auth, health (NOT_SERVING) and
    reflection. `metrics` holds the server's domain metrics too (None: per-call metrics only)."""
    metrics = metrics or ServerMetrics()
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics), ErrorInterceptor()]
    if config.token:
        open_prefixes = ("/grpc.health.v1.", "/grpc.reflection.")
        interceptors.append(AuthInterceptor(config.token, protected_methods, config.auth_read, open_prefixes))
    limit = config.max_message_bytes
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # gRPC sets SO_REUSEPORT by default, so a second server on a busy port would bind and share
            # it silently; without it the bind fails and the second server refuses to start.
            ("grpc.so_reuseport", 0),
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((*service_names, health.SERVICE_NAME), server)
    credentials = _credentials(config)
    port = _bind(server, config.listen, credentials)
    wrapped = Server(server, port, health_servicer, service_names, metrics)
    if config.metrics_listen:
        wrapped.metrics_endpoint = serve_metrics(config.metrics_listen, metrics.registry)
    await wrapped.set_serving(False)
    await server.start()
    log.info("listening on %s (port %d)%s", config.listen, port, " with TLS" if credentials else "")
    return wrapped


async def wait_for_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def reachable_address(listen: str, port: int) -> str:
    """`host:port` a peer can dial: the listen host with the bound port; a wildcard host becomes this
    machine's name."""
    host = listen.rpartition(":")[0]
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = socket.gethostname()
    return f"{host}:{port}"


def env() -> Mapping[str, str]:
    """The process environment; read only by the config builders, at start, never at import."""
    return os.environ
