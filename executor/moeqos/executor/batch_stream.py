"""One request inside the batch scheduler: its prompt, sampling, text, stop conditions and events.

A stream knows nothing of the batch: the scheduler hands it the logits of its row after each step
(`take`), and it chooses its token with its own generator, pushes the token through its own text stream
and decides whether it is finished, exactly as the single-request decode loop does
(moeqos.executor.generation.decode_loop): the same finish reasons, in the same order of precedence,
and the same statistics.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from moeqos.core.service_types import GenerationEvent
from moeqos.executor.generation import finish_stats
from moeqos.executor.sampling import SamplingParams, choose_token
from moeqos.executor.textstream import TextStream

__all__ = ["Phase", "Stream"]


class Phase(enum.Enum):
    """Where a stream is in the scheduler."""

    WAITING = "waiting"
    """Queued: no room in the batch yet (batch size or tokens in flight)."""
    PREFILLING = "prefilling"
    """Its prompt is being read, one chunk per step, into its own KV cache."""
    DECODING = "decoding"
    """A row of the batch: one token per step."""
    DONE = "done"
    """Its final event is queued; it holds nothing any more."""


class Stream:
    """State of one generation; events are read by its consumer and written by the stepping thread."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        eos_ids: set[int],
        decode: Callable[[list[int]], str] | None,
        cancel: threading.Event | None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.eos_ids = eos_ids
        self.cancel = cancel
        self.on_step = on_step
        """Hears `(index, seconds)` per token: the wall seconds since its previous token (index 0:
        since the request arrived, its wait and prefill included), the interval its client sees (the
        QoS loop's live measurement, moeqos.executor.live_stats)."""
        self.abandoned = False
        """Set when the consumer dropped the event iterator: treated as a cancellation."""
        self.phase = Phase.WAITING
        self.read = 0
        """Prompt tokens already prefilled."""
        self.cache: Any = None
        """Its own KV cache while prefilling (the batch's rows hold it afterwards)."""
        self.last_token: int | None = None
        """The token the next decode step feeds in."""
        self.events: deque[GenerationEvent | BaseException] = deque()
        """Events not yet read (an exception: the step failed, raised to the consumer)."""
        self._generator = params.generator()
        self._text = TextStream(decode, params.stop)
        self._start = time.perf_counter()
        self._stamps: list[float] = []

    @property
    def tokens_reserved(self) -> int:
        """KV tokens this stream may come to hold: its prompt plus every token it may generate."""
        return len(self.prompt_ids) + self.params.max_tokens

    @property
    def cancelled(self) -> bool:
        return self.abandoned or (self.cancel is not None and self.cancel.is_set())

    def take(self, logits: torch.Tensor, plan_spec: Callable[[], str]) -> None:
        """Choose the next token from this stream's last-position logits [V], queue its event, and
        finish the stream (final event with statistics) on a stop string, end-of-sequence or length."""
        token = choose_token(logits, self.params, self._generator)
        self._stamps.append(time.perf_counter())
        if self.on_step is not None:
            previous = self._stamps[-2] if len(self._stamps) > 1 else self._start
            self.on_step(len(self._stamps) - 1, self._stamps[-1] - previous)
        text, stopped = self._text.push(token)
        self.events.append(GenerationEvent(text=text, token_id=token))
        self.last_token = token
        if stopped or token in self.eos_ids:
            self.finish("stop" if stopped else "eos", plan_spec)
        elif len(self._stamps) >= self.params.max_tokens:
            self.finish("length", plan_spec)

    def finish(self, reason: str, plan_spec: Callable[[], str]) -> None:
        """Queue the final event (the held-back text and the statistics); the stream is done."""
        stats = finish_stats(len(self.prompt_ids), self._start, self._stamps, reason, plan_spec())
        self.events.append(GenerationEvent(text=self._text.flush(), token_id=None, stats=stats))
        self.phase, self.cache = Phase.DONE, None

    def fail(self, error: BaseException) -> None:
        """The step computing this stream failed: its consumer gets `error`; the stream is done."""
        self.events.append(error)
        self.phase, self.cache = Phase.DONE, None
