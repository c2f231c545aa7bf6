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
    # a miss only after the neighbour stopped is not the neighbour's: the floor was never lost
    assert recovery_seconds([10, 10, 10, 10, 10, 4, 10, 10], 8, start=2.0, stop=5) == 0.0


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


def test_switches_are_on_the_trace_clock_and_one_before_the_first_token_is_left_out() -> None:
    from moeqos.bench.contention import _from_first_token

    switches = [(4.5, 240, 30.0), (6.0, 96, 0.6)]  # the first: the Deploy, before the first token
    trace = _from_first_token([5.0, 5.5, 7.0], [(0.1, "bf16"), (6.0, "int4")], 8.0, 9.0, 10.0, switches)
    assert trace.switches == ((1.0, 96, 0.6),)


def test_the_section_reports_measured_perplexity_and_switches_per_mode(tmp_path) -> None:
    from types import SimpleNamespace

    from moeqos.bench.contention import _result
    from moeqos.core.plan import Plan

    predicted = {"bf16@cpu": 10.0, "int4@cpu": 11.0}
    ctx = SimpleNamespace(
        shape=(2, 4),
        device="cpu",
        out_dir=str(tmp_path),
        perplexity=lambda plan: SimpleNamespace(perplexity=predicted[plan.to_spec()] + 0.5),
    )
    quality = SimpleNamespace(predict_perplexity=lambda plan: predicted[plan.to_spec()])
    assert Plan.uniform(2, 4, "bf16", "cpu").to_spec() == "bf16@cpu"
    on = Trace(tokens([10] * 10), ((0.0, "bf16@cpu"), (4.0, "int4@cpu")), 3.0, 8.0, 10.0, ((4.0, 8, 0.25),))
    off = Trace(tokens([10] * 10), ((0.0, "bf16@cpu"),), 3.0, 8.0, 10.0)
    warmed = {"on": (12.0, "done: int4 8"), "off": (0.0, "done: int4 8")}
    basis = {
        "quality_tokens_per_s": 12.0,
        "fallback_loaded_tokens_per_s": 8.9,
        "fallback_loaded_median_tokens_per_s": 10.0,
        "fallback_loaded_windows_met": 0.7,
    }
    result = _result(ctx, {"on": on, "off": off}, 8.0, quality, warmed, basis)
    [section] = result.tables
    rows = {row[0]: row for row in section.rows}
    assert rows["on"][-2:] == ("10.50, 11.50", "0.25 (8)") and rows["off"][-2:] == ("10.50", "-")
    modes = result.data["modes"]
    assert modes["on"]["switches"] == [{"time_s": 4.0, "experts_changed": 8, "seconds": 0.25}]
    assert modes["on"]["plans"][1]["measured_perplexity"] == 11.5
    assert modes["on"]["variants_ahead"] == {"wait_s": 12.0, "said": "done: int4 8"}
    assert any("on 12s (done: int4 8)" in note for note in section.notes)
    assert result.data["floor_basis"] == basis  # which bound set the floor: here the loaded one
    assert any(
        "quiet rate 12.0" in note and "of its windows 8.9 (median 10.0)" in note for note in section.notes
    )
    assert any("met the floor in 70% of its 20 probe windows" in note for note in section.notes)


def test_the_floor_probe_takes_the_median_window_after_the_knobs_seconds() -> None:
    """The fallback plan's rate beside the neighbour: windows before `skip` (the thread knob reacting)
    are left out; nothing to measure is an error, not a floor of 0."""
    from moeqos.bench.contention import held_rate, window_counts

    rates = [2, 2, 30, 31, 29]  # a slow start, then ~30 tok/s
    times = [5.0 + k + i / r for k, r in enumerate(rates) for i in range(r)]  # the first token at 5.0
    assert window_counts(times, 0.0, 5.0) == rates
    assert held_rate(window_counts(times, 0.0, 5.0), 0.5) == 29.0
    assert window_counts(times, 2.0, 3.0) == [30, 31, 29]
    assert held_rate(window_counts(times, 2.0, 3.0), 0.5) == 30.0
    with pytest.raises(RuntimeError, match="too few tokens"):
        held_rate(window_counts([], 2.0, 3.0), 0.5)
    with pytest.raises(RuntimeError, match="too few tokens"):
        held_rate(window_counts(times, 5.0, 3.0), 0.5)


def test_the_loaded_bound_is_the_rate_the_fallback_plan_holds_in_the_goals_share_of_windows() -> None:
    """Ten windows: 90% of them reach the second lowest; the median would put the floor where the
    fallback plan itself meets it in half of them."""
    from moeqos.bench.contention import held_rate

    windows = [19, 16, 19, 17, 19, 20, 17, 20, 20, 15]
    assert held_rate(windows, 0.9) == 16.0
    assert sum(w >= 16.0 for w in windows) / len(windows) == 0.9
    assert held_rate(windows, 1.0) == 15.0 and held_rate(windows, 0.5) == 19.0
    assert held_rate([12] * 3, 0.9) == 12.0
    with pytest.raises(RuntimeError, match="too few tokens"):
        held_rate([0, 0, 9], 0.9)
