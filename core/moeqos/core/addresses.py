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


LOOPBACK = "loopback"
"""The host every spelling of this host's loopback stands for in `same_executor_key`: `localhost`,
127.0.0.1, ::1 and the wildcard addresses 0.0.0.0 and ::, which a dial on Linux reaches this host by.
Other 127.x addresses stay apart: a server may listen on one of them alone."""

_LOOPBACK_IPS = frozenset(ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "0.0.0.0", "::"))


def same_executor_key(address: str) -> str:
    """A key equal for two spellings of the same checked `address` (see `check_address`): host names
    lower-cased, IP addresses in their compressed form (an IPv4-mapped IPv6 address as its IPv4 one),
    the loopback spellings as one host (LOOPBACK), the port as a number, `unix:///PATH` as
    `unix:/PATH`. No name is resolved: two different names of one host are two keys."""
    if address.startswith("unix:"):
        return "unix:" + address.removeprefix("unix:").removeprefix("//")
    host, _, port = address.rpartition(":")
    return f"{_host_key(host)}:{int(port)}"


def _host_key(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        name = host.lower()
        return LOOPBACK if name == "localhost" else name
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _LOOPBACK_IPS:
        return LOOPBACK
    return f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
