"""Generation: greedy matches transformers, seeds reproduce, stop strings, cancel, validation, threads."""

from __future__ import annotations

import threading

import pytest
import torch
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.core.plan import Plan
from moeqos.core.service_types import GenerationEvent
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.generation import SamplingParams, time_decode
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.testing import make_tiny_mixtral

from tests.executor.tiny import EXPERTS, LAYERS, fp32_plan, prompt_ids

SAMPLED = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=7)


def _tokens(events: list[GenerationEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


def test_greedy_equals_transformers_generate(runtime, reference_model) -> None:
    prompt = prompt_ids(8, seed=3)
    events = list(runtime.generate(prompt[0].tolist(), SamplingParams(max_tokens=12)))
    with torch.no_grad():
        expected = reference_model.generate(prompt, max_new_tokens=12, do_sample=False)[0, 8:].tolist()
    got = _tokens(events)
    assert got == expected[: len(got)]
    stats = events[-1].stats
    assert stats is not None and stats.generated_tokens == len(got) and stats.prompt_tokens == 8
    assert (
        stats.finish_reason in ("length", "eos")
        and stats.tokens_per_s > 0
        and stats.time_to_first_token_s > 0
    )


def test_timed_decode_generates_past_end_of_sequence() -> None:
    """A model that predicts end-of-sequence (id 2) at every step is still timed over every token asked
    for, in each warm-up and timed run, each run with a fresh step (KV cache)."""
    calls: list[list[int]] = []
    fresh: list[int] = []

    def new_step():
        fresh.append(len(calls))

        def step(ids: list[int]) -> torch.Tensor:
            calls.append(ids)
            return torch.nn.functional.one_hot(torch.tensor(2), 8).float()  # [V]: eos wins

        return step

    timing = time_decode(new_step, [5, 6, 7], tokens=6, repeats=3, warmup=2)
    assert (timing.tokens, timing.warmup_runs, len(timing.rates)) == (6, 2, 3)
    assert len(calls) == 5 * 6 and fresh == [0, 6, 12, 18, 24]
    assert calls[:2] == [[5, 6, 7], [2]] and timing.tokens_per_s == sorted(timing.rates)[1] > 0
    with pytest.raises(ValueError, match="tokens >= 1"):
        time_decode(new_step, [5], tokens=0)


def test_fixed_seed_reproduces_and_other_seed_differs(runtime) -> None:
    first = _tokens(list(runtime.generate("the quick brown fox", SAMPLED)))
    again = _tokens(list(runtime.generate("the quick brown fox", SAMPLED)))
    other = _tokens(
        list(runtime.generate("the quick brown fox", SamplingParams(**{**SAMPLED.__dict__, "seed": 8})))
    )
    assert first == again and len(first) == 16
    assert first != other


def test_text_pieces_concatenate_to_the_decoded_text(runtime) -> None:
    events = list(runtime.generate("hello world", SAMPLED))
    text = "".join(e.text for e in events)
    assert text == runtime.tokenizer.decode(_tokens(events), skip_special_tokens=True)


def test_stop_string_ends_generation_before_it(runtime) -> None:
    full = "".join(e.text for e in runtime.generate("hello world", SAMPLED))
    assert len(full) >= 6, full
    stop = full[3:6]
    events = list(runtime.generate("hello world", SamplingParams(**{**SAMPLED.__dict__, "stop": (stop,)})))
    assert "".join(e.text for e in events) == full[: full.find(stop)]
    assert events[-1].stats is not None and events[-1].stats.finish_reason == "stop"


def test_cancel_stops_between_tokens(runtime) -> None:
    cancel = threading.Event()
    events = []
    for event in runtime.generate("hello", SamplingParams(max_tokens=50, temperature=1.0, seed=1), cancel):
        events.append(event)
        if len(events) == 3:
            cancel.set()
    stats = events[-1].stats
    assert stats is not None and stats.finish_reason == "cancelled" and stats.generated_tokens == 3


@pytest.mark.parametrize(
    ("prompt", "params", "error"),
    [
        ("", SamplingParams(), InvalidArgument),
        ([], SamplingParams(), InvalidArgument),
        ([5, 999], SamplingParams(), InvalidArgument),
        ("hello", SamplingParams(max_tokens=0), InvalidArgument),
        ("hello", SamplingParams(max_tokens=5000), OutOfRange),
        ("hello", SamplingParams(temperature=-1.0), InvalidArgument),
        ("hello", SamplingParams(temperature=float("nan")), InvalidArgument),
        ("hello", SamplingParams(top_p=0.0), InvalidArgument),
        ("hello", SamplingParams(top_p=1.5), InvalidArgument),
        ("hello", SamplingParams(temperature=1e-300), OutOfRange),  # logits / T would overflow to inf
        ("hello", SamplingParams(temperature=0.5, top_p=1e-300), OutOfRange),
        ("hello", SamplingParams(top_k=-1), InvalidArgument),
        ("hello", SamplingParams(stop=("",)), InvalidArgument),
    ],
)
def test_invalid_requests_are_rejected_before_generating(runtime, prompt, params, error) -> None:
    with pytest.raises(error):
        runtime.generate(prompt, params)


def test_model_without_tokenizer_takes_token_ids_only(tmp_path) -> None:
    directory = make_tiny_mixtral(tmp_path / "bare", with_tokenizer=False, num_layers=1)
    runtime = ExecutorRuntime.load(
        ExecutorConfig(model_dir=directory), Plan.uniform(1, EXPERTS, "int4", "cpu")
    )
    assert runtime.tokenizer is None
    events = list(runtime.generate([5, 6, 7], SamplingParams(max_tokens=4)))
    assert all(e.text == "" for e in events) and len(_tokens(events)) >= 1
    with pytest.raises(InvalidArgument):
        runtime.generate("text", SamplingParams())
    with pytest.raises(InvalidArgument):
        runtime.generate([5], SamplingParams(stop=("x",)))


def test_concurrent_generations_complete_while_plans_switch(runtime) -> None:
    results: dict[int, list[GenerationEvent]] = {}
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            params = SamplingParams(max_tokens=24, temperature=0.8, seed=seed)
            results[seed] = list(runtime.generate(prompt_ids(6, seed)[0].tolist(), params))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    plans = [
        Plan.uniform(LAYERS, EXPERTS, "int4", "cpu"),
        Plan.uniform(LAYERS, EXPERTS, "int8", "cpu"),
        fp32_plan(),
    ]
    switches = 0
    while any(t.is_alive() for t in threads) or switches < 3:
        runtime.apply_plan(plans[switches % 3])
        switches += 1
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 3
    for events in results.values():
        stats = events[-1].stats
        assert stats is not None and stats.finish_reason in ("length", "eos")
        assert stats.generated_tokens == len(_tokens(events))
