"""One owner of the per-token logic (moeqos.executor.decoding): the timed decode loop and a batch
scheduler's stream, fed the same logits, give the same tokens, text, finish reason and counts."""

from __future__ import annotations

import pytest
import torch
from moeqos.executor.batch_stream import Phase, Stream
from moeqos.executor.generation import SamplingParams, decode_loop

VOCAB = 8
SCRIPT = [3, 4, 5, 2, 6, 7, 1]
"""The tokens the scripted logits pick, in order (2 is end-of-sequence in the eos case)."""


def _logits(token: int) -> torch.Tensor:
    row = torch.zeros(VOCAB)  # [V]
    row[token] = 1.0
    return row


def _decode(ids: list[int]) -> str:
    return "".join("abcdefgh"[i] for i in ids)


def _loop(params: SamplingParams, eos: set[int]) -> list:
    script = iter(SCRIPT)
    return list(decode_loop(lambda ids: _logits(next(script)), [0, 1], params, eos, _decode))


def _stream(params: SamplingParams, eos: set[int]) -> list:
    stream = Stream([0, 1], params, eos, _decode, None)
    for token in SCRIPT:
        if stream.phase is Phase.DONE:
            break
        stream.take(_logits(token), lambda: "")
    return list(stream.events)


@pytest.mark.parametrize(
    ("params", "eos", "reason", "tokens"),
    [
        (SamplingParams(max_tokens=10), {2}, "eos", 4),
        (SamplingParams(max_tokens=10, stop=("ef",)), set(), "stop", 3),
        (SamplingParams(max_tokens=2), {2}, "length", 2),
    ],
)
def test_the_loop_and_a_stream_finish_alike(params, eos, reason, tokens) -> None:
    looped, streamed = _loop(params, eos), _stream(params, eos)
    assert [(e.text, e.token_id) for e in looped] == [(e.text, e.token_id) for e in streamed]
    for events in (looped, streamed):
        stats = events[-1].stats
        assert (stats.finish_reason, stats.generated_tokens, stats.prompt_tokens) == (reason, tokens, 2)
