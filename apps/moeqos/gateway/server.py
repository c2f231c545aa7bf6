"""Running the gateway: uvicorn serving the app until SIGTERM/SIGINT, then a graceful shutdown (requests
in flight finish) and exit 0.

config = GatewayConfig.from_env_and_args(args)   # flags and MOEQOS_GATEWAY_* read here, only here
serve(config)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn
from moeqos.gateway.app import create_app
from moeqos.gateway.config import GatewayConfig


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0 picks one: read it with `getsockname()`)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, except that SIGTERM/SIGINT end it gracefully and the process then exits 0, as
    the other moeqos servers do (uvicorn raises the signal again after its shutdown, so the process
    would die of it: exit -15 to a supervisor)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only (a gateway in a test's background loop)
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def uvicorn_server(config: GatewayConfig) -> uvicorn.Server:
    """The uvicorn server for the gateway (its own access log is off: the app logs one line per request)."""
    settings = uvicorn.Config(create_app(config), access_log=False, log_config=None, lifespan="on")
    return _Server(settings)


async def serve_on(server: uvicorn.Server, sock: socket.socket) -> None:
    """Serve on an already bound socket until the server is told to exit."""
    await server.serve(sockets=[sock])


def serve(config: GatewayConfig, on_started: Callable[[int], None] | None = None) -> None:
    """Bind (failing fast on a busy port), announce the port, and serve until a signal."""
    sock = bind(config.listen)
    if on_started is not None:
        on_started(sock.getsockname()[1])
    asyncio.run(serve_on(uvicorn_server(config), sock))
