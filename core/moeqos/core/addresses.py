"""Addresses of moeqos services, checked before anything dials them.

A peer address is what gRPC dials: `host:port` (a DNS name or IPv4 address), `[IPv6]:port`, or a
Unix-domain socket `unix:PATH` / `unix:///ABSOLUTE/PATH`. Checking it where it enters (a flag, a
Deploy or SetTarget request) turns a typo into INVALID_ARGUMENT at once instead of a dial that retries
forever in the background.
"""

from __future__ import annotations

import ipaddress
import re

from moeqos.core.errors import InvalidArgument

_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
"""One dot-separated label of a host name (RFC 1123; `_` tolerated, as resolvers do)."""

_FORMS = "host:port, [IPv6]:port or unix:PATH"


def check_address(address: str, what: str = "address", allow_port_zero: bool = False) -> str:
    """`address` if it is a dialable address (see the module docstring), else InvalidArgument naming
    `what`. `allow_port_zero` admits port 0, which only a listening address may use (any free port)."""
    if address.startswith("unix:"):
        if not address.removeprefix("unix:").strip("/"):
            raise InvalidArgument(f"{what} {address!r} names no socket path; expected {_FORMS}")
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not _valid_host(host):
        raise InvalidArgument(f"{what} {address!r} is not an address; expected {_FORMS}")
    lowest = 0 if allow_port_zero else 1
    if not port.isdigit() or not lowest <= int(port) <= 65535:
        raise InvalidArgument(f"{what} {address!r} needs a port in {lowest}..65535; expected {_FORMS}")
    return address


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1].split("%", 1)[0])
        except ValueError:
            return False
        return True
    return len(host) <= 253 and all(_LABEL.match(label) for label in host.split("."))
