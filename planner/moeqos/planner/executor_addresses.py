"""Which executor addresses a caller may make the planner dial (Plan and Frontier with an executor
address, Deploy).

The planner acts for its caller at the address the caller names, so an open planner would let anyone
probe hosts, ports and unix sockets from where it runs. An address must be a plain `host:port` (the
syntax of moeqos.core.addresses, less its unix sockets); when an allow-list is configured it must be
on it; when the planner has a token, naming an address needs it; and the planner never dials itself
(a call that would wait on itself). One Deploy names each executor once, however it is spelled.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from moeqos.core.addresses import check_address, same_executor_key
from moeqos.core.errors import InvalidArgument, Unauthenticated


class ExecutorAddresses:
    """The policy above; `own_port` and `own_host` are set once the planner has bound its port."""

    def __init__(self, allowed: tuple[str, ...] = (), token_required: bool = False) -> None:
        self.allowed = frozenset(_normal(a) for a in allowed)
        """Addresses callers may name (empty: any)."""
        self.token_required = token_required
        self.own_port: int | None = None
        self.own_host = ""

    def check(self, address: str, authenticated: bool) -> str:
        """`address` if the caller may have the planner dial it, else InvalidArgument/Unauthenticated."""
        _, port = _split(address)
        if self.token_required and not authenticated:
            raise Unauthenticated("naming an executor address needs this planner's token")
        if self.allowed and _normal(address) not in self.allowed:
            raise InvalidArgument(f"executor address {address!r} is not on this planner's allow-list")
        if port == self.own_port and same_executor_key(address) in self._own_keys():
            raise InvalidArgument(f"{address!r} is this planner's own address, not an executor")
        return address

    def _own_keys(self) -> set[str]:
        """The executor keys of this planner's own address, every loopback spelling folded into one
        (moeqos.core.addresses.same_executor_key), as `refuse_repeats` folds them."""
        hosts = ("localhost", self.own_host, socket.gethostname())
        return {same_executor_key(f"{host}:{self.own_port}") for host in hosts if host}


def refuse_repeats(addresses: Sequence[str]) -> None:
    """InvalidArgument if two of `addresses` name the same executor (`localhost:5001` and
    `127.0.0.1:5001`, say): one Deploy would then give one executor two plans. Malformed addresses
    are refused here too (the key needs the syntax checked)."""
    seen: dict[str, str] = {}
    for address in addresses:
        key = same_executor_key(check_address(address, "executor address"))
        if key in seen:
            raise InvalidArgument(
                f"executor addresses must be distinct: {seen[key]!r} and {address!r} name the same executor"
            )
        seen[key] = address


def _split(address: str) -> tuple[str, int]:
    """(host, port) of a dialable `host:port` (moeqos.core.addresses checks the syntax); a unix socket,
    which that syntax admits, is refused: the planner dials executors over the network only."""
    check_address(address, "executor address")
    if address.startswith("unix:"):
        raise InvalidArgument(f"executor address must be host:port, not a unix socket, got {address!r}")
    host, _, port = address.rpartition(":")
    return host, int(port)


def _normal(address: str) -> str:
    return address.strip().lower()
