"""The contention section's numbers from hand-made traces: windows meeting the floor, recovery after the
neighbour starts, the quality plan's return after it stops, and plan changes per resource change."""

from __future__ import annotations

import pytest
from moeqos.bench.contention_metrics import (
    Trace,
    quality_back_seconds,
    recovery_seconds,
    summarize,
    window_rates,
)


def tokens(rates: list[int]) -> tuple[float, ...]:
    """Token times that put `rates[k]` tokens in window k."""
    return tuple(k + (i + 0.5) / r for k, r in enumerate(rates) for i in range(r))


def test_window_rates_count_tokens_per_whole_second() -> None:
    assert window_rates([0.1, 0.9, 1.2, 2.99, 3.5], 3.2) == [2, 1, 1]


def test_recovery_counts_from_the_start_to_three_windows_in_a_row() -> None:
    rates = [10, 10, 10, 4, 5, 10, 4, 10, 10, 10, 10]
    assert recovery_seconds(rates, 8, start=2.5, stop=11) == pytest.approx(4.5)
    assert recovery_seconds([10] * 8, 8, start=2.0, stop=8) == 0.0
    assert recovery_seconds([10, 10, 4, 4, 4, 10, 10, 10], 8, start=2.0, stop=5) is None


def test_quality_back_after_the_stop() -> None:
    plans = [(0.0, "bf16"), (6.0, "int4"), (20.0, "int8"), (23.5, "bf16")]
    assert quality_back_seconds(plans, start=5.0, stop=18.0) == pytest.approx(5.5)
    assert quality_back_seconds([(0.0, "bf16")], start=5.0, stop=18.0) == 0.0
    assert quality_back_seconds(plans[:3], start=5.0, stop=18.0) is None


def test_a_plan_of_the_same_quality_counts_as_back() -> None:
    plans = [(0.0, "q"), (6.0, "fast"), (20.0, "q2"), (25.0, "q")]
    ppl = {"q": 91.04, "q2": 91.08, "fast": 404.3}.__getitem__
    assert quality_back_seconds(plans, start=5.0, stop=18.0) == pytest.approx(7.0)  # the same spec
    assert quality_back_seconds(plans, start=5.0, stop=18.0, perplexity=ppl) == pytest.approx(2.0)
    worse = {"q": 91.04, "q2": 93.0, "fast": 404.3}.__getitem__  # 2% worse: not the quality plan
    assert quality_back_seconds(plans, start=5.0, stop=18.0, perplexity=worse) == pytest.approx(7.0)


def test_summarize_a_trace() -> None:
    rates = [10, 10, 10, 4, 10, 10, 10, 10, 12, 12]
    plans = ((0.0, "bf16"), (3.6, "int4"), (4.0, "int3"), (8.4, "bf16"))
    m = summarize(Trace(tokens(rates), plans, 3.0, 8.0, 10.0), floor=8)
    assert m.windows == 10 and m.fraction_met == pytest.approx(0.9)
    assert m.recover_s == pytest.approx(1.0)
    assert m.quality_back_s == pytest.approx(0.4)
    assert (m.replans_on_start, m.replans_on_stop) == (2, 1)


def test_a_trace_starts_at_its_first_token() -> None:
    from moeqos.bench.contention import _from_first_token

    trace = _from_first_token([5.0, 5.5, 7.0], [(0.1, "bf16"), (4.0, "int8"), (6.0, "int4")], 8.0, 9.0, 10.0)
    assert trace.token_times == (0.0, 0.5, 2.0)
    assert trace.plans == ((0.0, "int8"), (1.0, "int4"))
    assert (trace.neighbour_start, trace.neighbour_stop, trace.end) == (3.0, 4.0, 5.0)
