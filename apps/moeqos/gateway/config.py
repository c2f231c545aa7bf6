"""The gateway's settings: one typed config, read from flags (which win) and MOEQOS_* variables here only.

Routes map each model name the gateway serves (a QoS class such as `smollm2-moe8:fast`) to the
executors that hold that class's standing target. Three ways to give them, merged in this order
(a later one replaces a class given earlier):

    MOEQOS_GATEWAY_ROUTES='smollm2-moe8:fast=h1:50061,h2:50061;smollm2-moe8:quality=h3:50061'
    --routes-file routes.json        {"smollm2-moe8:fast": ["h1:50061", "h2:50061"], ...}
    --route smollm2-moe8:fast=h1:50061,h2:50061        (repeatable)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moeqos.api.channel import ConnectOptions
from moeqos.api.server import check_address

DEFAULT_LISTEN = "127.0.0.1:8000"


@dataclass(frozen=True)
class GatewayConfig:
    """Settings of `moeqos gateway`."""

    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Model name (QoS class) -> executor addresses (`host:port`) holding that standing target."""
    listen: str = DEFAULT_LISTEN
    """`host:port` of the HTTP service; loopback by default (put a proxy with TLS in front to expose it)."""
    token: str | None = None
    """Bearer token every `/v1/*` request must carry (None: open). `/health` and `/metrics` stay open."""
    executor_token: str | None = None
    """Bearer token sent to the executors (needed when they run with `--auth-read`)."""
    executor_tls_ca: Path | None = None
    """PEM CA to verify the executors with; set it to reach them over TLS."""
    default_max_tokens: int = 256
    """`max_tokens` of a chat request that gives none (completions default to OpenAI's 16)."""
    request_timeout_s: float = 600.0
    """Deadline of one generation on an executor."""

    def __post_init__(self) -> None:
        check_address("listen", self.listen, listen=True)
        if not self.routes:
            raise ValueError("give at least one route: --route MODEL=HOST:PORT[,HOST:PORT...]")
        for model, addresses in self.routes.items():
            if not model.strip() or not addresses:
                raise ValueError(f"route {model!r} needs a model name and at least one executor")
            for address in addresses:
                check_address(f"executor of {model!r}", address)
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty")
        if self.default_max_tokens < 1 or self.request_timeout_s <= 0:
            raise ValueError("default_max_tokens must be >= 1 and request_timeout_s > 0")
        if self.executor_tls_ca is not None and not Path(self.executor_tls_ca).is_file():
            raise ValueError(f"TLS file {self.executor_tls_ca} does not exist")

    def executor_options(self) -> ConnectOptions:
        """How the gateway reaches its executors (GetInfo keeps the default deadline; generations
        take `request_timeout_s`)."""
        return ConnectOptions(token=self.executor_token, tls_ca=self.executor_tls_ca)

    @classmethod
    def from_env_and_args(cls, args: Any = None, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """The config from parsed CLI flags (which win) and MOEQOS_GATEWAY_* environment variables."""
        env = {} if env is None else env

        def pick(flag: str, var: str) -> Any:
            value = getattr(args, flag, None)
            return value if value is not None else env.get(var)

        routes = parse_routes(env.get("MOEQOS_GATEWAY_ROUTES", "").split(";"))
        routes_file = pick("routes_file", "MOEQOS_GATEWAY_ROUTES_FILE")
        if routes_file:
            routes |= read_routes_file(Path(routes_file))
        routes |= parse_routes(getattr(args, "route", None) or ())
        ca = pick("executor_tls_ca", "MOEQOS_GATEWAY_EXECUTOR_TLS_CA")
        return cls(
            routes=routes,
            # MOEQOS_LISTEN too, as every moeqos server reads it (the compose file sets it for each)
            listen=pick("listen", "MOEQOS_GATEWAY_LISTEN") or env.get("MOEQOS_LISTEN") or DEFAULT_LISTEN,
            token=pick("token", "MOEQOS_GATEWAY_TOKEN") or None,
            executor_token=pick("executor_token", "MOEQOS_GATEWAY_EXECUTOR_TOKEN") or None,
            executor_tls_ca=Path(ca) if ca else None,
            default_max_tokens=int(pick("default_max_tokens", "MOEQOS_GATEWAY_DEFAULT_MAX_TOKENS") or 256),
            request_timeout_s=float(pick("request_timeout", "MOEQOS_GATEWAY_REQUEST_TIMEOUT") or 600.0),
        )


def parse_routes(entries: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """`MODEL=HOST:PORT[,HOST:PORT...]` entries (blank ones skipped) as a routes mapping."""
    routes: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        if not entry.strip():
            continue
        model, sep, addresses = entry.rpartition("=")
        if not sep:
            raise ValueError(f"a route is MODEL=HOST:PORT[,HOST:PORT...], got {entry!r}")
        routes[model.strip()] = tuple(a.strip() for a in addresses.split(",") if a.strip())
    return routes


def read_routes_file(path: Path) -> dict[str, tuple[str, ...]]:
    """Routes from a JSON object `{"MODEL": ["HOST:PORT", ...]}`; ValueError naming the file if bad."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"routes file {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(a, str) for a in v) for v in data.values()
    ):
        raise ValueError(f'routes file {path}: expected {{"MODEL": ["HOST:PORT", ...]}}')
    return {str(model): tuple(addresses) for model, addresses in data.items()}
