"""Which executor addresses a caller may make the planner dial (Plan and Frontier with an executor
address, Deploy).

The planner acts for its caller at the address the caller names, so an open planner would let anyone
probe hosts, ports and unix sockets from where it runs. An address must be a plain `host:port`; when an
allow-list is configured it must be on it; when the planner has a token, naming an address needs it;
and the planner never dials itself (a call that would wait on itself).
"""

from __future__ import annotations

import socket

from moeqos.core.errors import InvalidArgument, Unauthenticated

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0", "[::]", "::"})


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
        host, port = _split(address)
        if self.token_required and not authenticated:
            raise Unauthenticated("naming an executor address needs this planner's token")
        if self.allowed and _normal(address) not in self.allowed:
            raise InvalidArgument(f"executor address {address!r} is not on this planner's allow-list")
        if port == self.own_port and host.lower() in LOOPBACK_HOSTS | {self.own_host, socket.gethostname()}:
            raise InvalidArgument(f"{address!r} is this planner's own address, not an executor")
        return address


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")  # an IPv6 literal
    plain = bool(host) and "/" not in host and (bracketed or ":" not in host)  # no unix:, dns:, paths
    if not plain or not port.isdigit() or not 0 < int(port) <= 65535:
        raise InvalidArgument(f"executor address must be host:port, got {address!r}")
    return host, int(port)


def _normal(address: str) -> str:
    return address.strip().lower()
