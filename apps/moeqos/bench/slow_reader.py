"""A gRPC client that never reads: raw HTTP/2 over a socket, the stream's receive window set to 0.

A normal gRPC client reads into its own buffers (64 KiB of window, more with BDP probing), so it cannot
show what a peer that keeps its window shut does to a server. This one opens one server-streaming
call, answers the server's SETTINGS and PINGs (so the connection stays up), never sends a
WINDOW_UPDATE, and records whether the server reset the stream.

    with SlowReader(port, "/moeqos.executor.v1.ExecutorService/Generate", request.SerializeToString()):
        ...  # the call is open and unread here
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4
STREAM = 1


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = bytearray([limit]), value - limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: str, value: str) -> bytes:
    """A header as an HPACK literal without indexing, new name, no Huffman coding."""
    raw_name, raw_value = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(raw_name), 7) + raw_name + _hpack_int(len(raw_value), 7) + raw_value


class SlowReader:
    """One unary-stream gRPC call on a raw HTTP/2 connection whose stream window is 0."""

    def __init__(self, port: int, method: str, request: bytes, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.settimeout(None)
        self.reset = threading.Event()
        """Set when the server reset the stream (RST_STREAM) or closed the connection."""
        self.ended_by = ""
        """What ended the stream: `RST_STREAM`, `GOAWAY`, `trailers` or `closed` (empty while open)."""
        self.data_bytes = 0
        """Response DATA bytes received (0 while the window stays shut)."""
        settings = struct.pack(">HI", SETTINGS_ENABLE_PUSH, 0) + struct.pack(
            ">HI", SETTINGS_INITIAL_WINDOW_SIZE, 0
        )
        headers = b"".join(
            hpack_literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", f"{host}:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        message = b"\x00" + struct.pack(">I", len(request)) + request  # gRPC length-prefixed message
        self._lock = threading.Lock()
        self._send(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(HEADERS, END_HEADERS, STREAM, headers)
            + frame(DATA, END_STREAM, STREAM, message)
        )
        self._reader = threading.Thread(target=self._read_frames, daemon=True)
        self._reader.start()

    def _send(self, data: bytes) -> None:
        with self._lock:
            self.sock.sendall(data)

    def _read_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _read_frames(self) -> None:
        try:
            while True:
                head = self._read_exactly(9)
                length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
                payload = self._read_exactly(length)
                if kind == SETTINGS and not flags & ACK:
                    self._send(frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    self._send(frame(PING, ACK, 0, payload))
                elif kind == DATA:
                    self.data_bytes += length
                elif kind in (RST_STREAM, GOAWAY) or (kind == HEADERS and flags & END_STREAM):
                    self._end({RST_STREAM: "RST_STREAM", GOAWAY: "GOAWAY"}.get(kind, "trailers"))
        except OSError:
            self._end("closed")

    def _end(self, by: str) -> None:
        if not self.reset.is_set():
            self.ended_by = by
            self.reset.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already closed by the server
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(5)

    def __enter__(self) -> SlowReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
