"""Incremental detokenisation with stop strings: what text each new token adds.

Text is held back while it could still become part of a stop string, or while the decoder shows an
incomplete multi-byte character, so the streamed pieces concatenate to exactly the final text.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"


class TextStream:
    """Feed token ids one by one; get the text delta each one adds and whether a stop string hit."""

    def __init__(self, decode: Callable[[list[int]], str] | None, stop: tuple[str, ...]) -> None:
        self._decode = decode
        self._stop = stop
        self._ids: list[int] = []
        self._emitted = 0
        self.text = ""

    def push(self, token_id: int) -> tuple[str, bool]:
        """(new text safe to emit, True when a stop string ended the text)."""
        if self._decode is None:
            return "", False
        self._ids.append(token_id)
        self.text = self._decode(self._ids)
        cut = min((i for i in (self.text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            return self._emit(cut), True
        return self._emit(self._safe_end()), False

    def flush(self) -> str:
        """Everything not emitted yet (at the end of generation)."""
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        piece = self.text[self._emitted : end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        return piece

    def _safe_end(self) -> int:
        end = len(self.text)
        while end > self._emitted and self.text[end - 1] == REPLACEMENT:
            end -= 1
        for size in range(min(end - self._emitted, max((len(s) for s in self._stop), default=1) - 1), 0, -1):
            if any(s.startswith(self.text[end - size : end]) for s in self._stop):
                return end - size
        return end
