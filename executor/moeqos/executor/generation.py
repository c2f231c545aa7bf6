"""Token-by-token generation: the decode loop, its events and its statistics.

The loop knows nothing of the model: it calls `step(token_ids) -> logits [V]`, which the runtime
implements with a per-request KV cache and the model lock. Requests from different threads therefore
interleave token by token (each step holds the lock for one forward pass), which is fair enough for a
handful of concurrent requests and lets a plan switch slip in between any two steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from moeqos.executor.sampling import SamplingParams, choose_token
from moeqos.executor.textstream import TextStream

__all__ = ["GenerationEvent", "GenerationStats", "SamplingParams", "decode_loop"]


@dataclass(frozen=True)
class GenerationStats:
    """Per-request figures, carried by the final event."""

    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    """From the request's start to its first generated token (prefill + one step)."""
    tokens_per_s: float
    """Decode rate after the first token: (n - 1) / (t_last - t_first); n / total when n < 2."""
    finish_reason: str
    """One of `length`, `stop`, `eos`, `cancelled`."""


@dataclass(frozen=True)
class GenerationEvent:
    """One streamed piece: a token (`stats` None) or the end of the request (`stats` set)."""

    token_id: int | None
    """The generated token, None on the final event."""
    text: str
    """Text this event adds (may be empty while a character or a possible stop string is held back)."""
    index: int
    """0-based position among generated tokens; on the final event, the number generated."""
    stats: GenerationStats | None = None


Step = Callable[[list[int]], torch.Tensor]
"""step(new token ids) -> logits [V] of the last position; it keeps the request's KV cache."""


def decode_loop(
    step: Step,
    prompt_ids: list[int],
    params: SamplingParams,
    eos_ids: set[int],
    decode: Callable[[list[int]], str] | None,
    cancel: threading.Event | None = None,
) -> Iterator[GenerationEvent]:
    """Generate up to params.max_tokens tokens, yielding one event per token and a final one."""
    generator = params.generator()
    stream = TextStream(decode, params.stop)
    start = time.perf_counter()
    stamps: list[float] = []
    pending, reason = list(prompt_ids), "length"
    while len(stamps) < params.max_tokens:
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        token = choose_token(step(pending), params, generator)
        stamps.append(time.perf_counter())
        text, stopped = stream.push(token)
        yield GenerationEvent(token, text, len(stamps) - 1)
        pending = [token]
        if stopped or token in eos_ids:
            reason = "stop" if stopped else "eos"
            break
    stats = _stats(len(prompt_ids), start, stamps, reason)
    yield GenerationEvent(None, stream.flush(), len(stamps), stats)


def _stats(prompt_tokens: int, start: float, stamps: list[float], reason: str) -> GenerationStats:
    count = len(stamps)
    ttft = stamps[0] - start if stamps else 0.0
    if count >= 2:
        rate = (count - 1) / max(stamps[-1] - stamps[0], 1e-9)
    else:
        rate = count / max((stamps[-1] if stamps else time.perf_counter()) - start, 1e-9)
    return GenerationStats(prompt_tokens, count, ttft, rate, reason)
