"""A heartbeat on stderr for waits that may take a while, so a slow step never looks like a hang.

Nothing is printed for a wait shorter than `after` seconds. Past that, a terminal gets one spinner line
redrawn in place and anything else (a log file, a pipe) one line every `every` seconds; either way the
wait ends with one line saying how long it took. Only stderr is written, so `--json` output on stdout
stays clean. Pure standard library, so every floor that waits on something can use it.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

AFTER_S = 2.0
"""Waits shorter than this stay silent."""
EVERY_S = 10.0
"""Seconds between the lines written where a spinner cannot be redrawn (not a terminal)."""
_SPIN = "|/-\\"


class Waiting:
    """Context manager: a heartbeat for the wait inside it (see the module docstring)."""

    def __init__(
        self, what: str, after: float | None = None, every: float | None = None, stream: TextIO | None = None
    ):
        self.what = what
        self.after = AFTER_S if after is None else after
        self.every = EVERY_S if every is None else every
        self.stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._done = threading.Event()
        self._spoke = False
        self._started = 0.0
        self._thread = threading.Thread(target=self._beat, name="moeqos-progress", daemon=True)

    def __enter__(self) -> Waiting:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join()
        if self._spoke:
            outcome = "done" if kind is None else "stopped"
            self._write(f"{self.what}: {outcome} after {self._elapsed()}", end="\n")

    def _beat(self) -> None:
        if self._done.wait(self.after):
            return
        self._spoke = True
        tick = 0
        while True:
            if self._tty:
                self._write(f"{_SPIN[tick % len(_SPIN)]} {self.what} ({self._elapsed()})", end="")
            else:
                self._write(f"{self.what}... ({self._elapsed()})", end="\n")
            tick += 1
            if self._done.wait(0.2 if self._tty else self.every):
                return

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self._started:.0f} s"

    def _write(self, text: str, end: str) -> None:
        prefix = "\r\033[K" if self._tty else ""
        self.stream.write(prefix + text + end)
        self.stream.flush()


def waiting(
    what: str, after: float | None = None, every: float | None = None, stream: TextIO | None = None
) -> Waiting:
    """A heartbeat for a wait described by `what` (e.g. "deploying"); use it as `with waiting(...):`."""
    return Waiting(what, after, every, stream)
