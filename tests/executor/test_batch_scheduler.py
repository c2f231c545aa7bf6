"""Continuous batching on the tiny model, real forward passes: every stream of a batch gets the tokens it
would get alone, streams join and leave mid-decode, cancelling one leaves the others, a plan switch
between steps applies to all streams, limits hold, and a disk-tier expert is read once per step."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch
from moeqos.core.errors import OverBudget
from moeqos.core.plan import Plan
from moeqos.core.service_types import GenerationEvent
from moeqos.executor.config import BatchLimits
from moeqos.executor.generation import SamplingParams
from moeqos.executor.runtime import ExecutorRuntime

from tests.executor.tiny import EXPERTS, LAYERS, prompt_ids

PROMPTS = [prompt_ids(n, seed=s)[0].tolist() for n, s in ((5, 1), (11, 2), (3, 3), (8, 4))]


def _greedy(tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=tokens, temperature=0.0)


def _tokens(events: list[GenerationEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


def _alone(runtime: ExecutorRuntime, prompt: list[int], tokens: int) -> list[int]:
    return _tokens(list(runtime.generate(prompt, _greedy(tokens))))


def _batch_rows(runtime: ExecutorRuntime) -> list[int]:
    """Records the batch size [B] of every forward pass the runtime makes from now on."""
    rows: list[int] = []
    forward = runtime.forward_logits

    def recording(token_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        rows.append(token_ids.shape[0])
        return forward(token_ids, *args, **kwargs)

    runtime.forward_logits = recording  # type: ignore[method-assign]
    return rows


def _passes(runtime: ExecutorRuntime) -> list[tuple[int, int]]:
    """Records the token ids' shape [B, S] of every forward pass the runtime makes from now on."""
    passes: list[tuple[int, int]] = []
    forward = runtime.forward_logits

    def recording(token_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        passes.append((int(token_ids.shape[0]), int(token_ids.shape[1])))
        return forward(token_ids, *args, **kwargs)

    runtime.forward_logits = recording  # type: ignore[method-assign]
    return passes


def _round_robin(streams: list[Iterator[GenerationEvent]]) -> list[list[GenerationEvent]]:
    """Read the streams one event at a time in turn (one thread) until every one has ended."""
    events: list[list[GenerationEvent]] = [[] for _ in streams]
    live = set(range(len(streams)))
    while live:
        for i in sorted(live):
            event = next(streams[i])
            events[i].append(event)
            if event.stats is not None:
                live.discard(i)
    return events


def test_each_stream_of_a_batch_decodes_as_it_would_alone(runtime) -> None:
    """The four prompts (5, 11, 3 and 8 tokens) arrive together: one left-padded prefill pass reads
    them all, then one decode pass a step serves them all."""
    expected = [_alone(runtime, p, 10) for p in PROMPTS]
    passes = _passes(runtime)
    streams = [runtime.generate(p, _greedy(10)) for p in PROMPTS]
    got = _round_robin(streams)
    assert [_tokens(e) for e in got] == expected
    assert [shape for shape in passes if shape[1] > 1] == [(len(PROMPTS), 11)]  # prefilled together
    assert max(rows for rows, _ in passes) == len(PROMPTS)  # they really decoded together
    assert all(e[-1].stats is not None and e[-1].stats.finish_reason == "length" for e in got)


def test_prompts_that_fit_one_chunk_together_prefill_together(make_runtime) -> None:
    """A chunk of 16 tokens: 5 and 11 padded to 11 twice exceed it, so 5 reads alone, then 11 alone
    (11 and 3 padded are 22), then 3 and 8 together (2 x 8); a 20-token prompt reads in two chunks
    of its own. Every stream says what it says alone."""
    runtime = make_runtime(batch=BatchLimits(prefill_chunk=16))
    long = prompt_ids(20, seed=5)[0].tolist()
    prompts = [*PROMPTS, long]
    expected = [_alone(runtime, p, 6) for p in prompts]
    passes = _passes(runtime)
    got = _round_robin([runtime.generate(p, _greedy(6)) for p in prompts])
    assert [_tokens(e) for e in got] == expected
    assert [shape for shape in passes if shape[1] > 1] == [(1, 5), (1, 11), (2, 8), (1, 16), (1, 4)]


def test_streams_join_and_leave_mid_decode(runtime) -> None:
    """A short stream starts alone; a longer prompt joins after a few tokens (its row is wider); a short
    one joins and leaves again; the long-lived ones carry on, every one as it would alone."""
    plan = [(PROMPTS[2], 24), (PROMPTS[1], 12), (PROMPTS[0], 3)]
    expected = [_alone(runtime, p, n) for p, n in plan]
    first = runtime.generate(plan[0][0], _greedy(plan[0][1]))
    head = [next(first) for _ in range(5)]
    second = runtime.generate(plan[1][0], _greedy(plan[1][1]))
    head += [next(first) for _ in range(2)]
    third = runtime.generate(plan[2][0], _greedy(plan[2][1]))
    rest = _round_robin([first, second, third])
    assert _tokens(head + rest[0]) == expected[0]
    assert [_tokens(rest[1]), _tokens(rest[2])] == expected[1:]
    assert runtime.scheduler.active == 0 and len(runtime.scheduler._cache) == 0


def test_cancelling_one_stream_leaves_the_others(runtime) -> None:
    expected = [_alone(runtime, p, 12) for p in PROMPTS[:3]]
    cancel = threading.Event()
    streams = [
        runtime.generate(p, _greedy(12), cancel if i == 1 else None) for i, p in enumerate(PROMPTS[:3])
    ]
    firsts = [next(stream) for stream in streams]
    cancel.set()
    got = [[first, *rest] for first, rest in zip(firsts, _round_robin(streams), strict=True)]
    assert got[1][-1].stats is not None and got[1][-1].stats.finish_reason == "cancelled"
    assert len(_tokens(got[1])) < 12
    assert [_tokens(got[0]), _tokens(got[2])] == [expected[0], expected[2]]


def test_a_dropped_reader_cancels_its_stream(runtime) -> None:
    kept, dropped = runtime.generate(PROMPTS[0], _greedy(12)), runtime.generate(PROMPTS[1], _greedy(400))
    next(dropped)
    dropped.close()
    assert _tokens(list(kept)) == _alone(runtime, PROMPTS[0], 12)
    assert runtime.scheduler.active == 0


def test_a_plan_switch_between_steps_applies_to_every_stream(runtime) -> None:
    """Steps are driven by hand: both streams prefill together (one token each) and decode (another)
    in step 1, so after 4 steps each holds 5 tokens when the plan changes."""
    switched = Plan.uniform(LAYERS, EXPERTS, "int4", "cpu")
    original = runtime.plan

    def alone_switching_after(prompt: list[int], steps: int) -> list[int]:
        stream = runtime.generate(prompt, _greedy(10))
        for _ in range(steps):
            runtime.scheduler.step()
        runtime.apply_plan(switched)
        tokens = _tokens(list(stream))
        runtime.apply_plan(original)
        return tokens

    expected = [alone_switching_after(PROMPTS[0], 4), alone_switching_after(PROMPTS[1], 4)]
    unswitched = [_alone(runtime, p, 10) for p in PROMPTS[:2]]
    assert expected != unswitched  # the switch changes what they say, so the test can tell
    streams = [runtime.generate(p, _greedy(10)) for p in PROMPTS[:2]]
    for _ in range(4):
        runtime.scheduler.step()
    runtime.apply_plan(switched)
    got = _round_robin(streams)
    assert [_tokens(e) for e in got] == expected
    assert {e[-1].stats.plan_spec for e in got if e[-1].stats} == {switched.to_spec()}


def test_streams_wait_for_batch_room_and_token_room(make_runtime) -> None:
    runtime = make_runtime(batch=BatchLimits(max_batch=2, max_tokens=40))
    rows = _batch_rows(runtime)
    streams = [runtime.generate(p, _greedy(8)) for p in PROMPTS[:3]]  # reserve 13, 19, 11 tokens
    got = _round_robin(streams)
    assert max(rows) == 2  # the third waited for a place
    assert [_tokens(e) for e in got] == [_alone(runtime, p, 8) for p in PROMPTS[:3]]
    with pytest.raises(OverBudget, match="tokens in flight"):
        runtime.generate(PROMPTS[1], _greedy(30))  # 41 tokens can never fit


def test_a_batch_reads_each_disk_expert_once_per_step(make_runtime) -> None:
    """Every expert on disk and one pool slot: each expert run is a read, so a step of 4 streams reads at
    most every expert once (layers x experts), not top-k per stream (4 x layers x 2)."""
    runtime = make_runtime(Plan.uniform(LAYERS, EXPERTS, "fp32", "disk"), disk_pool_slots=1)
    streams = [runtime.generate(p, _greedy(6)) for p in PROMPTS]
    for _ in range(len(PROMPTS)):
        runtime.scheduler.step()  # every stream has prefilled and joined
    before = runtime.store_stats().misses
    runtime.scheduler.step()  # one decode step of the whole batch
    reads = runtime.store_stats().misses - before
    assert 0 < reads <= LAYERS * EXPERTS < len(PROMPTS) * LAYERS * 2
    for stream in streams:
        stream.close()


def test_a_failed_step_fails_the_streams_it_computed_and_the_next_ones_run(runtime) -> None:
    streams = [runtime.generate(p, _greedy(8)) for p in PROMPTS[:2]]
    for _ in range(2):
        runtime.scheduler.step()  # both decoding
    forward = runtime.forward_logits

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    runtime.forward_logits = broken  # type: ignore[method-assign]
    runtime.scheduler.step()
    runtime.forward_logits = forward  # type: ignore[method-assign]
    for stream in streams:
        with pytest.raises(RuntimeError, match="device lost"):
            list(stream)
    assert runtime.scheduler.active == 0
    assert _tokens(list(runtime.generate(PROMPTS[2], _greedy(4)))) == _alone(runtime, PROMPTS[2], 4)


def test_a_streams_step_times_are_the_intervals_its_client_sees() -> None:
    """Regression: the QoS loop was calibrated on forward passes alone, while a client's tokens also wait
    for the hand-off (the event loop, gRPC): on a loaded machine the fit predicted 2x the rate measured.
    A stream hears each token's time since its previous one, the consumer's hold included."""
    import time

    from moeqos.executor.batch_stream import Stream

    heard: list[tuple[int, float]] = []
    logits = torch.nn.functional.one_hot(torch.tensor(3), 8).float()  # [V]
    began = time.perf_counter()  # before the stream: its first interval counts from its creation
    stream = Stream([5], SamplingParams(max_tokens=4), set(), None, None, lambda *x: heard.append(x))
    for _ in range(4):
        time.sleep(0.05)  # the consumer sends the previous token on before the next step
        stream.take(logits, lambda: "")
    wall = time.perf_counter() - began
    assert [index for index, _ in heard] == [0, 1, 2, 3]
    assert all(seconds >= 0.05 for _, seconds in heard[1:])
    assert sum(seconds for _, seconds in heard) <= wall + 1e-3
