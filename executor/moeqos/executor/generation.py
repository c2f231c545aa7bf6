"""Token-by-token generation: the decode loop, which yields moeqos.core GenerationEvents and their stats.

The loop knows nothing of the model: it calls `step(token_ids) -> logits [V]`, which the runtime
implements with a per-request KV cache and the model lock. It decodes one request alone, as timed
decodes need (`time_decode`); served generations are decoded together by
moeqos.executor.batch_scheduler, whose streams finish and report exactly as this loop does.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from moeqos.core.service_types import GenerationEvent
from moeqos.executor.decoding import Decoding
from moeqos.executor.sampling import SamplingParams

__all__ = [
    "TIMED_DECODE_EOS",
    "TIMED_DECODE_WARMUP_RUNS",
    "DecodeTiming",
    "SamplingParams",
    "decode_loop",
    "time_decode",
]


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
) -> Iterator[GenerationEvent]:
    """Generate up to params.max_tokens tokens, yielding one event per token and a final one.

    `plan_spec()` names the plan in force, read when the request finishes (a switch may land mid-request)
    for the final event's statistics; without it they name none. The per-token logic is
    moeqos.executor.decoding.Decoding's. (Served generations decode in moeqos.executor.batch_scheduler;
    this loop times decoding for measurements.)
    """
    decoding = Decoding(len(prompt_ids), params, eos_ids, decode)
    pending, reason = list(prompt_ids), None
    while not decoding.done:
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        event = decoding.take(step(pending))
        yield event
        pending = [event.token_id] if event.token_id is not None else []
    yield decoding.finish(reason, plan_spec() if plan_spec else "")


TIMED_DECODE_EOS = "ignored"
"""What `time_decode` does at end-of-sequence (as reports name it, e.g. `moeqos eval --json`'s
`decode_eos`): it generates past it, so a rate is always over exactly the tokens asked for."""

TIMED_DECODE_WARMUP_RUNS = 1
"""Untimed runs `time_decode` makes by default before the timed ones (as `moeqos eval --json` reports
them, `decode_warmup_runs`)."""


@dataclass(frozen=True)
class DecodeTiming:
    """Greedy decode rates of one prompt, every run exactly `tokens` long (see `time_decode`)."""

    tokens: int
    """Tokens each timed run generated: the count asked for, end-of-sequence ignored."""
    warmup_runs: int
    """Untimed runs before the timed ones."""
    rates: tuple[float, ...]
    """tokens/s of each timed run, after its first token (GenerationStats.tokens_per_s)."""

    @property
    def tokens_per_s(self) -> float:
        """The median of the timed runs."""
        return float(statistics.median(self.rates))


def time_decode(
    new_step: Callable[[], Step],
    prompt_ids: list[int],
    tokens: int,
    repeats: int = 1,
    warmup: int = TIMED_DECODE_WARMUP_RUNS,
) -> DecodeTiming:
    """Time greedy decodes of exactly `tokens` tokens: `warmup` untimed runs (first touch of the plan's
    weights, allocator growth), then `repeats` timed ones, each with a fresh `new_step()` (KV cache).

    End-of-sequence is ignored, so every plan is timed over the same length whatever it predicts: a
    plan that would stop early is not credited with a shorter (or penalised with a longer) run.
    """
    if tokens < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need tokens >= 1, repeats >= 1, warmup >= 0; got {tokens}, {repeats}, {warmup}")
    params = SamplingParams(max_tokens=tokens, temperature=0.0)

    def run() -> float:
        *_, last = decode_loop(new_step(), prompt_ids, params, set(), None)
        assert last.stats is not None and last.stats.generated_tokens == tokens
        return last.stats.tokens_per_s

    for _ in range(warmup):
        run()
    return DecodeTiming(tokens, warmup, tuple(run() for _ in range(repeats)))
