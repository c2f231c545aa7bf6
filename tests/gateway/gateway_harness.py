"""A real gateway (uvicorn on 127.0.0.1:0, on an event loop of its own in a background thread) in front
of the service tests' executors, for the gateway tests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from moeqos.gateway.config import GatewayConfig
from moeqos.gateway.server import bind, serve_on, uvicorn_server

from tests.service.service_harness import BackgroundLoop


@dataclass
class RunningGateway:
    """A started gateway; `url` is its base URL (`http://127.0.0.1:PORT`)."""

    url: str
    _server: Any
    _done: Any
    _bg: BackgroundLoop

    def close(self) -> None:
        self._server.should_exit = True
        self._done.result(10)
        self._bg.close()


def start_gateway(routes: dict[str, tuple[str, ...]], **settings: Any) -> RunningGateway:
    """Serve a gateway with `routes` (other GatewayConfig fields in `settings`) until `close()`."""
    config = GatewayConfig(routes=routes, listen="127.0.0.1:0", **settings)
    sock = bind(config.listen)
    server = uvicorn_server(config)
    bg = BackgroundLoop()
    done = bg.submit(serve_on(server, sock))
    deadline = time.monotonic() + 30
    while not server.started:
        if done.done():
            done.result()  # raises why it did not start
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway did not start in 30 s")
        time.sleep(0.02)
    return RunningGateway(f"http://127.0.0.1:{sock.getsockname()[1]}", server, done, bg)
