"""Token-by-token generation: the decode loop, which yields moeqos.core GenerationEvents and their stats.

The loop knows nothing of the model: it calls `step(token_ids) -> logits [V]`, which the runtime
implements with a per-request KV cache and the model lock. Requests from different threads therefore
interleave token by token (each step holds the lock for one forward pass), which is fair enough for a
handful of concurrent requests and lets a plan switch slip in between any two steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import torch
from moeqos.core.service_types import GenerationEvent, GenerationStats
from moeqos.executor.sampling import SamplingParams, choose_token
from moeqos.executor.textstream import TextStream

__all__ = ["SamplingParams", "decode_loop"]


Step = Callable[[list[int]], torch.Tensor]
"""step(new token ids) -> logits [V] of the last position; it keeps the request's KV cache."""


def decode_loop(
    step: Step,
    prompt_ids: list[int],
    params: SamplingParams,
    eos_ids: set[int],
    decode: Callable[[list[int]], str] | None,
    cancel: threading.Event | None = None,
    plan_spec: Callable[[], str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Iterator[GenerationEvent]:
    """Generate up to params.max_tokens tokens, yielding one event per token and a final one.

    `plan_spec()` names the plan in force, read when the request finishes (a switch may land mid-request)
    for the final event's statistics; without it they name none. `on_step(index, seconds)` hears the
    wall time of each token's step (forward pass and sampling; index 0 includes the prefill).
    """
    generator = params.generator()
    stream = TextStream(decode, params.stop)
    start = time.perf_counter()
    stamps: list[float] = []
    pending, reason = list(prompt_ids), "length"
    while len(stamps) < params.max_tokens:
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        began = time.perf_counter()
        token = choose_token(step(pending), params, generator)
        stamps.append(time.perf_counter())
        if on_step is not None:
            on_step(len(stamps) - 1, stamps[-1] - began)
        text, stopped = stream.push(token)
        yield GenerationEvent(text=text, token_id=token)
        pending = [token]
        if stopped or token in eos_ids:
            reason = "stop" if stopped else "eos"
            break
    stats = _stats(len(prompt_ids), start, stamps, reason, plan_spec() if plan_spec else "")
    yield GenerationEvent(text=stream.flush(), token_id=None, stats=stats)


def _stats(
    prompt_tokens: int, start: float, stamps: list[float], reason: str, plan_spec: str
) -> GenerationStats:
    count, end = len(stamps), time.perf_counter()
    ttft = stamps[0] - start if stamps else 0.0
    if count >= 2:
        rate = (count - 1) / max(stamps[-1] - stamps[0], 1e-9)
    else:
        rate = count / max((stamps[-1] if stamps else end) - start, 1e-9)
    return GenerationStats(
        prompt_tokens=prompt_tokens,
        generated_tokens=count,
        time_to_first_token_s=ttft,
        tokens_per_s=rate,
        total_s=end - start,
        finish_reason=reason,
        plan_spec=plan_spec,
    )
