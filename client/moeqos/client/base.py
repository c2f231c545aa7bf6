"""What every client shares: the channel, metadata, deadlines, error mapping and context management."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Generator
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from moeqos.api.channel import ConnectOptions, async_channel, sync_channel
from moeqos.api.grpc_errors import error_from_rpc
from moeqos.core.errors import MoeqosError, Unavailable

DEFAULT_DEADLINE: Any = object()
"""Marks "use ConnectOptions.timeout" for a call's `timeout` (None means no deadline)."""
T = TypeVar("T")


class SyncBase:
    """A blocking client over one channel; use as a context manager or call `close()`."""

    def __init__(self, address: str, options: ConnectOptions | None = None) -> None:
        self.address = address
        self.options = options or ConnectOptions()
        self._channel = sync_channel(address, self.options)

    def _timeout(self, timeout: Any) -> float | None:
        return self.options.timeout if timeout is DEFAULT_DEADLINE else timeout

    def _unary(self, method: Callable[..., Any], request: Any, timeout: Any = DEFAULT_DEADLINE) -> Any:
        try:
            return method(request, timeout=self._timeout(timeout), metadata=self.options.metadata())
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def _stream(
        self, method: Callable[..., Any], request: Any, timeout: float | None, read: Callable[[Any], T]
    ) -> Generator[T, None, None]:
        """`read(message)` for each message of a server stream; closing the generator cancels the call."""
        call = method(request, timeout=timeout, metadata=self.options.metadata())
        try:
            for message in call:
                yield read(message)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """The server's health status name for `service` (`SERVING`, `NOT_SERVING`, ...)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        reply = self._unary(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_until_serving(self, timeout: float, service: str = "") -> None:
        """Poll health until SERVING (an executor loading its model is NOT_SERVING); Unavailable after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health(service, timeout=max(0.1, min(5.0, deadline - time.monotonic()))) == "SERVING":
                    return
            except MoeqosError:
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise Unavailable(f"{self.address} is not serving after {timeout:g}s")
            time.sleep(0.2)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncBase:
    """An asyncio client over one channel; use as an async context manager or await `close()`.

    Create it inside the running event loop (the channel binds to it).
    """

    def __init__(self, address: str, options: ConnectOptions | None = None) -> None:
        self.address = address
        self.options = options or ConnectOptions()
        self._channel = async_channel(address, self.options)

    def _timeout(self, timeout: Any) -> float | None:
        return self.options.timeout if timeout is DEFAULT_DEADLINE else timeout

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: Any = DEFAULT_DEADLINE) -> Any:
        try:
            return await method(request, timeout=self._timeout(timeout), metadata=self.options.metadata())
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    async def _stream(
        self, method: Callable[..., Any], request: Any, timeout: float | None, read: Callable[[Any], T]
    ) -> AsyncGenerator[T, None]:
        """`read(message)` for each message of a server stream; closing the generator cancels the call."""
        call = method(request, timeout=timeout, metadata=self.options.metadata())
        try:
            async for message in call:
                yield read(message)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()

    async def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """The server's health status name for `service` (`SERVING`, `NOT_SERVING`, ...)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        reply = await self._unary(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def wait_until_serving(self, timeout: float, service: str = "") -> None:
        """Poll health until SERVING (an executor loading its model is NOT_SERVING); Unavailable after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if (
                    await self.health(service, timeout=max(0.1, min(5.0, deadline - time.monotonic())))
                    == "SERVING"
                ):
                    return
            except MoeqosError:
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise Unavailable(f"{self.address} is not serving after {timeout:g}s")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
