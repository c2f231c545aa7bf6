"""The error table of moeqos.api.grpc_errors, both directions: every domain error has its own status code,
and a client reading that code back raises the same domain type (NotReady reads back as Unavailable, the
one code two server-side errors share). Real servers raising them: tests/service and tests/reliability."""

from __future__ import annotations

import inspect

import grpc
import pytest
from moeqos.api.grpc_errors import CLOSEST_KEY, error_from_rpc, status_for
from moeqos.core import errors

DOMAIN_ERRORS = [
    kind
    for _, kind in inspect.getmembers(errors, inspect.isclass)
    if issubclass(kind, errors.MoeqosError) and kind is not errors.MoeqosError
]
READ_BACK_AS = {errors.NotReady: errors.Unavailable}
"""Server-side errors whose code the client reads as a more general type."""


class FailedCall(grpc.RpcError):
    """What a client sees from a failed call: code, details and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailing


@pytest.mark.parametrize("kind", DOMAIN_ERRORS, ids=lambda kind: kind.__name__)
def test_every_domain_error_crosses_the_wire_as_itself(kind: type[errors.MoeqosError]) -> None:
    raised = (
        kind("the reason", {"tokens_per_s": 3.5}) if kind is errors.InfeasibleTarget else kind("the reason")
    )
    code, details, trailing = status_for(raised)
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), kind
    read = error_from_rpc(FailedCall(code, details, trailing))
    assert type(read) is READ_BACK_AS.get(kind, kind)
    assert str(read) == "the reason"
    if kind is errors.InfeasibleTarget:
        assert trailing[0][0] == CLOSEST_KEY and read.closest == {"tokens_per_s": 3.5}


def test_distinct_domain_errors_get_distinct_codes_except_the_unavailable_pair() -> None:
    codes = {kind: status_for(kind("x"))[0] for kind in DOMAIN_ERRORS}
    shared = {code for code in codes.values() if list(codes.values()).count(code) > 1}
    assert shared == {grpc.StatusCode.UNAVAILABLE}
    assert {kind for kind, code in codes.items() if code in shared} == {errors.NotReady, errors.Unavailable}


def test_anything_else_is_internal_naming_its_type() -> None:
    code, details, _ = status_for(KeyError("k"))
    assert code == grpc.StatusCode.INTERNAL and "KeyError" in details


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.Unavailable),
        (grpc.StatusCode.PERMISSION_DENIED, errors.Unauthenticated),
        (grpc.StatusCode.INTERNAL, errors.MoeqosError),
    ],
)
def test_codes_no_domain_error_is_sent_as_still_read_as_a_domain_type(
    code: grpc.StatusCode, kind: type
) -> None:
    read = error_from_rpc(FailedCall(code, "why"))
    assert type(read) is kind and "why" in str(read)
