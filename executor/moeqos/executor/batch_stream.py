"""One request inside the batch scheduler: its prompt, sampling, text, stop conditions and events.

A stream knows nothing of the batch: the scheduler hands it the logits of its row after each step
(`take`), and its moeqos.executor.decoding.Decoding chooses the token with the stream's own generator,
pushes it through its own text stream and decides whether it is finished, the per-token logic the
single-request decode loop (moeqos.executor.generation.decode_loop) shares.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from moeqos.core.service_types import GenerationEvent
from moeqos.executor.decoding import Decoding
from moeqos.executor.sampling import SamplingParams

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
        self.cancel = cancel
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
        self._decoding = Decoding(len(prompt_ids), params, eos_ids, decode, on_step)
        """`on_step(index, seconds)` hears each token: the wall seconds since its previous token (index
        0: since the request arrived, its wait and prefill included), the interval its client sees (the
        QoS loop's live measurement, moeqos.executor.live_stats)."""

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
        event = self._decoding.take(logits)
        self.events.append(event)
        self.last_token = event.token_id
        if self._decoding.done:
            self.finish(None, plan_spec)

    def finish(self, reason: str | None, plan_spec: Callable[[], str]) -> None:
        """Queue the final event (the held-back text and the statistics), ended for `reason` (None: the
        one its last token gave); the stream is done."""
        self.events.append(self._decoding.finish(reason, plan_spec()))
        self.phase, self.cache = Phase.DONE, None

    def fail(self, error: BaseException) -> None:
        """The step computing this stream failed: its consumer gets `error`; the stream is done."""
        self.events.append(error)
        self.phase, self.cache = Phase.DONE, None
