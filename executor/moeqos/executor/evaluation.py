"""Quality and speed of the model under a plan: windowed perplexity and measured decode tokens/s."""

from __future__ import annotations

import math
import time

import torch
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.core.plan import Plan
from moeqos.core.service_types import Evaluation
from moeqos.executor.generation import time_decode
from moeqos.executor.measurement import Measurable


def perplexity(runtime: Measurable, ids: list[int], context_length: int, stride: int) -> tuple[float, int]:
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
    runtime: Measurable,
    token_ids: list[int],
    plan: Plan | None,
    context_length: int,
    stride: int | None,
    decode_tokens: int,
    corpus: str = "",
) -> Evaluation:
    """Perplexity of `token_ids` and decode tokens/s, under `plan` (seen by this thread only; None: the
    plan in force); `corpus` labels the token ids in the result.

    The decode is timed by moeqos.executor.generation.time_decode over exactly `decode_tokens` tokens
    (end-of-sequence ignored, after one untimed warm-up run); none when `decode_tokens` is 0."""
    stride = stride or context_length
    _validate(runtime, token_ids, context_length, stride, decode_tokens)
    start = time.perf_counter()
    with runtime.viewing(plan):
        spec = (plan or runtime.plan).to_spec()
        ppl, scored = perplexity(runtime, token_ids, context_length, stride)
        timing = time_decode(runtime.decode_step, token_ids[:16], decode_tokens) if decode_tokens else None
    return Evaluation(
        perplexity=ppl,
        tokens_per_s=timing.tokens_per_s if timing else 0.0,
        tokens=scored,
        plan_spec=spec,
        corpus=corpus,
        seconds=time.perf_counter() - start,
        decode_tokens=timing.tokens if timing else 0,
    )


def _validate(runtime: Measurable, ids: list[int], context_length: int, stride: int, decode: int) -> None:
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
