"""Routing a model name (a QoS class) to the least-loaded of the executors that serve it.

Load is the gateway's own count of requests in flight on each executor: exact for the requests this
gateway sends, free (no extra call per request), and what decides queueing on an executor whose slots
are shared only with this gateway. Ties go round-robin. An executor that just failed with UNAVAILABLE
is tried last until it answers again, so one that is down costs the next request nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from moeqos.api.channel import ConnectOptions
from moeqos.client import AsyncExecutorClient
from moeqos.gateway.errors import unknown_model


@dataclass
class Backend:
    """One executor as the gateway sees it."""

    address: str
    client: AsyncExecutorClient
    in_flight: int = 0
    """Requests this gateway has on it now."""
    down: bool = False
    """Its last call failed with UNAVAILABLE (tried last until a call succeeds)."""
    order: int = field(default=0)
    """Round-robin position among equally loaded executors (the last pick gets the highest)."""


class Router:
    """The executors of each model name; one gRPC channel per executor address, shared across names.

    Create it inside the running event loop (its asyncio clients bind to it)."""

    def __init__(self, routes: Mapping[str, tuple[str, ...]], options: ConnectOptions) -> None:
        by_address: dict[str, Backend] = {}
        for address in {a for addresses in routes.values() for a in addresses}:
            by_address[address] = Backend(address, AsyncExecutorClient(address, options))
        self._routes = {model: [by_address[a] for a in addresses] for model, addresses in routes.items()}
        self._backends = list(by_address.values())
        self._ticks = itertools.count(1)

    @property
    def models(self) -> list[str]:
        return list(self._routes)

    def backends(self, model: str) -> list[Backend]:
        """The model's executors (404 for an unknown model)."""
        if model not in self._routes:
            raise unknown_model(model, self.models)
        return self._routes[model]

    def candidates(self, model: str) -> list[Backend]:
        """The model's executors in the order to try them: up before down, then least loaded first,
        then least recently picked."""
        return sorted(self.backends(model), key=lambda b: (b.down, b.in_flight, b.order))

    def begin(self, backend: Backend) -> None:
        """Count a request on `backend` (until `end`)."""
        backend.in_flight += 1
        backend.order = next(self._ticks)

    def end(self, backend: Backend, down: bool = False) -> None:
        """The request on `backend` is over; `down`: it failed because the executor is unavailable."""
        backend.in_flight -= 1
        backend.down = down

    def in_flight(self) -> Iterator[tuple[str, str, int]]:
        """(model, executor address, requests in flight) for every route."""
        for model, backends in self._routes.items():
            for backend in backends:
                yield model, backend.address, backend.in_flight

    async def close(self) -> None:
        for backend in self._backends:
            await backend.client.close()
