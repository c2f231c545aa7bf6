"""Quality and speed of the model under a plan: windowed perplexity and measured decode tokens/s."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.core.plan import Plan
from moeqos.executor.generation import time_decode

if TYPE_CHECKING:
    from moeqos.executor.runtime import ExecutorRuntime


@dataclass(frozen=True)
class EvalResult:
    """What `evaluate` measured."""

    perplexity: float
    tokens_scored: int
    tokens_per_s: float
    """Greedy decode rate under the plan over exactly `decode_tokens` tokens, end-of-sequence ignored,
    after one untimed warm-up run (moeqos.executor.generation.time_decode); 0 when none were asked."""
    seconds: float
    """Wall time of the whole evaluation, plan switches included."""
    decode_tokens: int = 0
    """Tokens the timed decode generated (and `tokens_per_s` is measured over)."""
    decode_warmup_runs: int = 0
    """Untimed decode runs before the timed one."""


@contextmanager
def plan_applied(runtime: ExecutorRuntime, plan: Plan | None) -> Iterator[None]:
    """Serve `plan` inside the block, then restore the previous plan (no-op when it is already served).

    Holds the runtime's apply lock throughout, so no other switch interleaves; requests running
    meanwhile are served with the temporary plan.
    """
    with runtime.apply_lock:
        previous = runtime.plan
        if plan is None or plan == previous:
            yield
            return
        runtime.apply_plan(plan)
        try:
            yield
        finally:
            runtime.apply_plan(previous)


def perplexity(
    runtime: ExecutorRuntime, ids: list[int], context_length: int, stride: int
) -> tuple[float, int]:
    """exp(mean NLL) over windows of `context_length` starting every `stride` tokens; each target is
    scored once, in the first window that has it and context before it (stride = context_length gives
    non-overlapping windows, whose first token has no context and is not scored)."""
    nll, count, scored_until = 0.0, 0, 1
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + context_length, len(ids))
        window = torch.tensor([ids[begin:end]])  # [1, S]
        logits = runtime.forward_logits(window)[0, :-1].float()  # [S-1, V] predicting positions begin+1..
        first = max(scored_until, begin + 1) - (begin + 1)
        targets = window[0, 1 + first :].to(logits.device)  # [S-1-first]
        logp = torch.log_softmax(logits[first:], dim=-1)  # [S-1-first, V]
        nll -= float(logp.gather(1, targets[:, None]).sum())
        count += targets.numel()
        scored_until = end
        if end == len(ids):
            break
    return math.exp(nll / count), count


def evaluate(
    runtime: ExecutorRuntime,
    token_ids: list[int],
    plan: Plan | None,
    context_length: int,
    stride: int | None,
    decode_tokens: int,
) -> EvalResult:
    """Perplexity of `token_ids` and decode tokens/s, under `plan` (applied temporarily)."""
    stride = stride or context_length
    _validate(runtime, token_ids, context_length, stride, decode_tokens)
    start = time.perf_counter()
    with plan_applied(runtime, plan):
        ppl, scored = perplexity(runtime, token_ids, context_length, stride)
        timing = time_decode(runtime.decode_step, token_ids[:16], decode_tokens) if decode_tokens else None
    seconds = time.perf_counter() - start
    if timing is None:
        return EvalResult(ppl, scored, 0.0, seconds)
    return EvalResult(ppl, scored, timing.tokens_per_s, seconds, timing.tokens, timing.warmup_runs)


def _validate(
    runtime: ExecutorRuntime, ids: list[int], context_length: int, stride: int, decode: int
) -> None:
    if len(ids) < 2:
        raise InvalidArgument("perplexity needs at least 2 token ids")
    if not 2 <= context_length <= runtime.context_length:
        raise OutOfRange(f"context_length must be in [2, {runtime.context_length}], got {context_length}")
    if not 1 <= stride <= context_length:
        raise InvalidArgument(f"stride must be in [1, context_length], got {stride}")
    if decode < 0 or 16 + decode > runtime.context_length:
        raise OutOfRange(f"decode_tokens must be in [0, {runtime.context_length - 16}], got {decode}")
    vocab = runtime.model.vocab_size
    if any(not 0 <= t < vocab for t in ids):
        raise InvalidArgument(f"token ids must be in [0, {vocab})")
