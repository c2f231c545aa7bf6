"""A slow reader cannot hold the executor: a server stream whose message stays unsent for longer than a
window (the reader stopped reading, so HTTP/2 flow control holds the write) is cancelled.

gRPC gives a streaming handler no write deadline: after `yield`, the server awaits the write outside
the handler, for as long as the peer keeps its window shut. `WriteWatch` arms a timer around each
`yield`; when it fires, `on_stall` runs first (the servicer frees the generation slot and stops the
generation there, since the handler itself is not resumed) and then the call's task is cancelled,
which makes gRPC reset the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class WriteWatch:
    """Times the writes of one server stream; created inside the handler's task, on the event loop."""

    def __init__(self, window_s: float, on_stall: Callable[[], None]) -> None:
        if window_s <= 0:
            raise ValueError(f"the write window must be positive, got {window_s}")
        self.window_s = window_s
        self.on_stall = on_stall
        self.stalled = False
        """Whether the window passed with a message unsent (the stream was then cancelled)."""
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None

    def writing(self) -> None:
        """A message is about to be yielded to gRPC: start the window."""
        self.written()
        self._timer = self._loop.call_later(self.window_s, self._stall)

    def written(self) -> None:
        """The handler was resumed (the previous message was sent), or it ends: stop the window."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stall(self) -> None:
        self._timer = None
        self.stalled = True
        log.warning("a stream's reader left a message unread for %.1f s: cancelling it", self.window_s)
        self.on_stall()
        if self._task is not None:
            self._task.cancel()
