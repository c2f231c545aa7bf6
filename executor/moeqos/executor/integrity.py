"""Content hashes of the executor's own files, written with each file and checked on every read.

A variant file (safetensors) carries the SHA-256 of its tensors (names, dtypes, shapes and bytes) in its
header metadata under `DIGEST_KEY`. `read_verified` recomputes it, so a flipped byte, random data, a
truncated file or a file deleted under a running plan is reported as `DamagedFile` instead of being
served as silently wrong weights or surfacing as a library error. Files without a hash (written before
hashes existed, or by anything else) count as damaged: the caller rebuilds them from the checkpoint.

`IntegrityLog` counts what was found and mended, for GetInfo.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

DIGEST_KEY = "moeqos.sha256"
"""The safetensors metadata key of a file's content hash."""


class DamagedFile(Exception):
    """A file is missing, unreadable or does not match its content hash (the reason says which).

    Internal to the executor: callers mend it (rebuild from the checkpoint) or raise a domain error.
    The message names the file, never its directory (errors travel to anonymous callers)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path.name}: {reason}")
        self.path = path
        self.reason = reason


def digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_with_digest(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write `state` (contiguous CPU tensors) as safetensors with its content hash in the header."""
    save_file(state, str(path), metadata={DIGEST_KEY: digest(state)})


def read_verified(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of `path`, in memory of its own, after checking the content hash.

    Raises DamagedFile when the file is missing, cannot be parsed, has no hash or does not match it."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            expected = (handle.metadata() or {}).get(DIGEST_KEY)
            # clone: the read happens here, and the tensors do not pin the file's mapped pages
            state = {name: handle.get_tensor(name).clone() for name in handle.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise DamagedFile(path, "missing") from None
    except Exception as exc:  # safetensors raises its own error types for every parse failure
        raise DamagedFile(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    if expected is None:
        raise DamagedFile(path, "no content hash")
    if digest(state) != expected:
        raise DamagedFile(path, "content hash mismatch")
    return state


@dataclass(frozen=True)
class IntegrityStatus:
    """What the integrity checks found since start."""

    damaged: int
    """Damaged or missing files found."""
    mended: int
    """Of those, rebuilt from the checkpoint."""
    last: str
    """The last problem found (file name and reason; empty when none)."""

    def describe(self) -> str:
        """`ok`, or the counts and the last problem, for GetInfo."""
        if not self.damaged:
            return "ok"
        return f"{self.damaged} damaged, {self.mended} mended; last: {self.last}"


class IntegrityLog:
    """Thread-safe counters of damaged files found and mended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._damaged = 0
        self._mended = 0
        self._last = ""

    def damaged(self, error: DamagedFile) -> None:
        with self._lock:
            self._damaged += 1
            self._last = str(error)

    def mended(self) -> None:
        with self._lock:
            self._mended += 1

    def failed(self, message: str) -> None:
        """A damaged file could not be rebuilt (the message says why)."""
        with self._lock:
            self._last = message

    def status(self) -> IntegrityStatus:
        with self._lock:
            return IntegrityStatus(self._damaged, self._mended, self._last)
