"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status.

The executors' gRPC status codes arrive as moeqos.core.errors exceptions (moeqos.client maps them);
`from_domain` maps those to HTTP:

    InvalidArgument, OutOfRange -> 400     OverBudget (RESOURCE_EXHAUSTED: the executor is busy) -> 429
    Unavailable, NotReady -> 503           anything else -> 502 (the executor failed)
"""

from __future__ import annotations

from typing import Any

from moeqos.core import errors


class ApiError(Exception):
    """An error the gateway answers with `status` and an OpenAI error body."""

    def __init__(
        self, status: int, message: str, kind: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        """OpenAI's `type`: invalid_request_error, authentication_error, rate_limit_error, ..."""
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param)


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "this gateway needs `Authorization: Bearer TOKEN` with its token",
        "authentication_error",
        code="invalid_api_key",
    )


def unknown_model(model: str, known: list[str]) -> ApiError:
    return ApiError(
        404,
        f"the model {model!r} does not exist; this gateway serves {', '.join(known) or 'no models'}",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def no_executor(model: str, why: str) -> ApiError:
    return ApiError(503, f"no executor of {model!r} can take the request: {why}", "service_unavailable")


def from_domain(exc: Exception) -> ApiError:
    """The HTTP error for an exception raised by an executor call."""
    if isinstance(exc, errors.InvalidArgument):
        return bad_request(str(exc))
    if isinstance(exc, errors.OverBudget):
        return ApiError(429, f"the executor is busy: {exc}", "rate_limit_error", code="executor_busy")
    if isinstance(exc, errors.Unavailable | errors.NotReady):
        return ApiError(503, f"the executor is unavailable: {exc}", "service_unavailable")
    return ApiError(502, f"the executor failed: {exc}", "api_error", code="executor_error")
