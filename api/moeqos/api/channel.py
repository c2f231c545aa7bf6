"""How a client connects: TLS, token and deadline options, and channel construction (sync and asyncio)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio


@dataclass(frozen=True)
class ConnectOptions:
    """Connection settings shared by every moeqos client."""

    token: str | None = None
    """Bearer token sent as `authorization` metadata on every call."""
    tls: bool = False
    """Speak TLS (implied by any TLS file below)."""
    tls_ca: Path | None = None
    """PEM CA to verify the server with (None: the system roots)."""
    tls_cert: Path | None = None
    """PEM client certificate, for servers that require mutual TLS."""
    tls_key: Path | None = None
    """PEM private key of `tls_cert`."""
    server_name: str | None = None
    """Name to verify the server certificate against, when it differs from the address's host."""
    timeout: float | None = 60.0
    """Default deadline in seconds for unary calls (streams take theirs per call); None waits forever."""
    max_message_bytes: int = 64 * 1024 * 1024
    """Largest message accepted or sent."""

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the bearer token when one is set."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.tls_ca), read(self.tls_key), read(self.tls_cert))

    def channel_options(self) -> list[tuple[str, int | str]]:
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options


def sync_channel(address: str, options: ConnectOptions) -> grpc.Channel:
    """A blocking channel to `host:port`."""
    if options.uses_tls:
        return grpc.secure_channel(address, options.credentials(), options.channel_options())
    return grpc.insecure_channel(address, options.channel_options())


def async_channel(address: str, options: ConnectOptions) -> grpc.aio.Channel:
    """An asyncio channel to `host:port` (create it inside the running event loop)."""
    if options.uses_tls:
        return grpc.aio.secure_channel(address, options.credentials(), options.channel_options())
    return grpc.aio.insecure_channel(address, options.channel_options())
