"""The domain's exceptions. Servers map them to gRPC status codes in one place (one interceptor per
side) and the client maps the codes back, so callers on either side of the wire catch the same types."""

from __future__ import annotations

from typing import Any


class MoeqosError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidArgument(MoeqosError, ValueError):
    """The request itself is malformed: unknown expert, precision or tier, bad number. (INVALID_ARGUMENT)"""


class OutOfRange(InvalidArgument):
    """A value is well formed but outside what is supported, e.g. max_tokens past the context. (OUT_OF_RANGE)"""


class InfeasibleTarget(MoeqosError):
    """No plan meets the QoS target within the budgets. (FAILED_PRECONDITION)

    `closest` describes the nearest feasible point (a JSON-able dict: predicted tokens/s, perplexity,
    and the plan's text form), so a caller can relax its target knowingly.
    """

    def __init__(self, message: str, closest: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.closest = closest or {}


class OverBudget(MoeqosError):
    """A plan or request needs more bytes (or queue slots) than a tier allows. (RESOURCE_EXHAUSTED)"""


class NotReady(MoeqosError):
    """The service is not able to serve yet (model loading) or any more (shutting down). (UNAVAILABLE)"""


class Unavailable(MoeqosError):
    """A peer (executor or planner) could not be reached. (UNAVAILABLE)"""


class Unauthenticated(MoeqosError):
    """A state-changing call arrived without the configured token. (UNAUTHENTICATED)"""


class PlanApplyFailed(MoeqosError):
    """Carrying out a valid plan failed part way; the previous plan was restored. (ABORTED)"""


class DataLoss(MoeqosError):
    """A file the service needs is damaged or gone and could not be rebuilt. (DATA_LOSS)"""
