"""The one map between domain errors (moeqos.core.errors) and gRPC status codes, for both sides of the wire.

Server side: `ErrorInterceptor` wraps every handler and turns a raised exception into a status:

    InvalidArgument -> INVALID_ARGUMENT     OutOfRange -> OUT_OF_RANGE
    InfeasibleTarget -> FAILED_PRECONDITION OverBudget -> RESOURCE_EXHAUSTED
    NotReady, Unavailable -> UNAVAILABLE    Unauthenticated -> UNAUTHENTICATED
    PlanApplyFailed -> ABORTED              anything else -> INTERNAL (logged with its traceback)

`InfeasibleTarget.closest` travels as JSON (UTF-8 bytes) in the trailing metadata key
`moeqos-closest-bin` (a `-bin` key, so any gRPC implementation passes it through as bytes).

Client side: `error_from_rpc` turns a `grpc.RpcError` back into the typed exception.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from moeqos.core import errors

log = logging.getLogger(__name__)

CLOSEST_KEY = "moeqos-closest-bin"
"""Trailing metadata key carrying the closest feasible point of an infeasible target as JSON."""

# Most specific first: OutOfRange is an InvalidArgument, so it must be tested before it.
_TO_CODE: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InfeasibleTarget, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.OverBudget, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PlanApplyFailed, grpc.StatusCode.ABORTED),
    (errors.DataLoss, grpc.StatusCode.DATA_LOSS),
)

_FROM_CODE: dict[grpc.StatusCode, type[errors.MoeqosError]] = {
    grpc.StatusCode.OUT_OF_RANGE: errors.OutOfRange,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.OverBudget,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.Unauthenticated,
    grpc.StatusCode.ABORTED: errors.PlanApplyFailed,
    grpc.StatusCode.DATA_LOSS: errors.DataLoss,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
    """(code, details, trailing metadata) for an exception raised by a handler."""
    for kind, code in _TO_CODE:
        if isinstance(exc, kind):
            trailing: tuple[tuple[str, Any], ...] = ()
            if isinstance(exc, errors.InfeasibleTarget):
                trailing = ((CLOSEST_KEY, json.dumps(exc.closest).encode()),)
            return code, str(exc), trailing
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", ()


def error_from_rpc(error: grpc.RpcError) -> Exception:
    """The typed moeqos exception for a failed call (MoeqosError for codes with no domain type)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(code)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return errors.InfeasibleTarget(details, _closest(error))
    if code == grpc.StatusCode.CANCELLED:
        return errors.MoeqosError(f"cancelled: {details}")
    kind = _FROM_CODE.get(code)
    if kind is None:
        return errors.MoeqosError(f"{code.name}: {details}")
    return kind(details)


def _closest(error: grpc.RpcError) -> dict[str, Any]:
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == CLOSEST_KEY:
            decoded: dict[str, Any] = json.loads(value)
            return decoded
    return {}


# ----- server side -------------------------------------------------------------------------------
Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Stream = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def wrap_handler(
    handler: grpc.RpcMethodHandler | None,
    unary: Callable[[Unary], Unary],
    stream: Callable[[Stream], Stream],
) -> grpc.RpcMethodHandler | None:
    """The handler with its unary-unary or unary-stream behaviour wrapped (moeqos has no client streams).

    A unary-stream handler written as a coroutine that streams with `context.write` and returns nothing
    (the stock health Watch) is wrapped by `unary`: gRPC awaits a coroutine function and iterates
    anything else, so a generator wrapper around it would fail."""
    if handler is None:
        return None
    if handler.unary_unary is not None:
        return handler._replace(unary_unary=unary(handler.unary_unary))
    behavior = handler.unary_stream
    if behavior is None:
        return handler
    wrapped = unary(behavior) if inspect.iscoroutinefunction(behavior) else stream(behavior)
    return handler._replace(unary_stream=wrapped)


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """End the call with the status `exc` maps to; unexpected errors are logged first."""
    code, details, trailing = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("unhandled error in handler", exc_info=exc)
    await context.abort(code, details, trailing_metadata=trailing)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions escaping any handler to status codes (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is not None and handler.request_deserializer is not None:
            handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        return wrap_handler(handler, _guard_unary, _guard_stream)


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes did not parse (e.g. a string field with invalid UTF-8), so
    the guard can answer INVALID_ARGUMENT instead of gRPC's generic UNKNOWN."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return parse


def _check_decoded(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise errors.InvalidArgument(f"malformed request: {request.error}")


def _guard_unary(behavior: Unary) -> Unary:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            _check_decoded(request)
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc)

    return guarded


def _guard_stream(behavior: Stream) -> Stream:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            _check_decoded(request)
            async for item in behavior(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc)

    return guarded
