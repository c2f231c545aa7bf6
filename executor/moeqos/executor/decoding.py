"""The per-token logic of one generation, in one place: choosing each token with the request's own
generator, pushing it through its text stream, deciding when it is finished, and its statistics.

Both decoders use it: the single-request loop of timed decodes (moeqos.executor.generation.decode_loop)
and a stream of the batch scheduler (moeqos.executor.batch_stream.Stream), so they finish for the same
reasons in the same order of precedence (a stop string, then end-of-sequence, then the length) and
report the same statistics.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from moeqos.core.service_types import GenerationEvent, GenerationStats
from moeqos.executor.sampling import SamplingParams, choose_token
from moeqos.executor.textstream import TextStream

__all__ = ["Decoding", "finish_stats"]


class Decoding:
    """One generation's tokens, text and finish, fed the logits of its last position once per step."""

    def __init__(
        self,
        prompt_tokens: int,
        params: SamplingParams,
        eos_ids: set[int],
        decode: Callable[[list[int]], str] | None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.eos_ids = eos_ids
        self.on_step = on_step
        """Hears `(index, seconds)` per token: the wall seconds since its previous token (index 0: since
        the generation started)."""
        self.reason: str | None = None
        """Why the generation ended (`stop`, `eos`, `length`), once it has; None before."""
        self._generator = params.generator()
        self._text = TextStream(decode, params.stop)
        self._stamps: list[float] = []
        self.start = time.perf_counter()
        """When the generation started (its request arrived): the first token's interval counts from it."""

    @property
    def done(self) -> bool:
        """Whether no more tokens are wanted (a finish reason, or max_tokens reached)."""
        return self.reason is not None or len(self._stamps) >= self.params.max_tokens

    def take(self, logits: torch.Tensor) -> GenerationEvent:
        """Choose the next token from the last-position logits [V]; its event. Sets `reason` when this
        token finishes the generation."""
        token = choose_token(logits, self.params, self._generator)
        self._stamps.append(time.perf_counter())
        if self.on_step is not None:
            previous = self._stamps[-2] if len(self._stamps) > 1 else self.start
            self.on_step(len(self._stamps) - 1, self._stamps[-1] - previous)
        text, stopped = self._text.push(token)
        if stopped or token in self.eos_ids:
            self.reason = "stop" if stopped else "eos"
        elif len(self._stamps) >= self.params.max_tokens:
            self.reason = "length"
        return GenerationEvent(text=text, token_id=token)

    def finish(self, reason: str | None, plan_spec: str) -> GenerationEvent:
        """The final event: the held-back text and the statistics, ended for `reason` (None: the
        reason `take` found, else `length`)."""
        self.reason = reason or self.reason or "length"
        stats = finish_stats(self.prompt_tokens, self.start, self._stamps, self.reason, plan_spec)
        return GenerationEvent(text=self._text.flush(), token_id=None, stats=stats)


def finish_stats(
    prompt_tokens: int, start: float, stamps: list[float], reason: str, plan_spec: str
) -> GenerationStats:
    """The statistics of a generation that started at `start` and produced a token at each of `stamps`
    (perf_counter seconds), ended for `reason`."""
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
