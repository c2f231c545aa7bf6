"""Next-token choice and incremental text, checked on hand-made distributions and strings."""

from __future__ import annotations

import torch
from moeqos.executor.sampling import SamplingParams, choose_token
from moeqos.executor.textstream import TextStream

LOGITS = torch.log(torch.tensor([0.05, 0.5, 0.3, 0.15]))


def _draws(params: SamplingParams, n: int = 400) -> set[int]:
    generator = params.generator()
    return {choose_token(LOGITS, params, generator) for _ in range(n)}


def test_greedy_and_top_k_one_pick_the_argmax() -> None:
    assert choose_token(LOGITS, SamplingParams(), SamplingParams().generator()) == 1
    assert _draws(SamplingParams(temperature=1.0, top_k=1, seed=0)) == {1}


def test_top_k_and_top_p_restrict_the_support() -> None:
    assert _draws(SamplingParams(temperature=1.0, top_k=2, seed=0)) == {1, 2}
    assert _draws(SamplingParams(temperature=1.0, top_p=0.79, seed=0)) == {1, 2}
    assert _draws(SamplingParams(temperature=1.0, top_p=0.81, seed=0)) == {1, 2, 3}
    assert _draws(SamplingParams(temperature=1.0, seed=0), 2000) == {0, 1, 2, 3}


def test_same_seed_same_draws() -> None:
    params = SamplingParams(temperature=1.0, seed=11)
    first, second = params.generator(), params.generator()
    assert [choose_token(LOGITS, params, first) for _ in range(30)] == [
        choose_token(LOGITS, params, second) for _ in range(30)
    ]


def _decode(ids: list[int]) -> str:
    return "".join(chr(ord("a") + i) for i in ids)


def test_text_stream_holds_back_possible_stop_prefixes() -> None:
    stream = TextStream(_decode, ("cd",))
    pieces = [stream.push(0), stream.push(1), stream.push(2)]
    assert pieces == [("a", False), ("b", False), ("", False)]  # "c" may start "cd"
    assert stream.push(3) == ("", True)
    assert stream.text == "ab" and stream.flush() == ""


def test_text_stream_releases_held_text_when_no_stop_follows() -> None:
    stream = TextStream(_decode, ("cd",))
    pieces = [stream.push(i)[0] for i in (2, 4, 2)]
    assert pieces == ["", "ce", ""]
    assert "".join(pieces) + stream.flush() == "cec"
