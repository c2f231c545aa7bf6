"""`paired_scale` on a fake clock: the factor between two modes' steps, robust to bursts of load."""

from __future__ import annotations

import pytest
from moeqos.executor import step_timing
from moeqos.executor.step_timing import RoundMode, paired_scale, paired_steps


class Clock:
    """A perf_counter that moves only when a step runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Mode(RoundMode):
    """A mode a step can see (`active`), with fixed uncredited cold costs and credit per step."""

    def __init__(self, uncredited: float = 0.0, credit: float = 0.0) -> None:
        self.blocks = []
        self.active = False
        self.cold, self.credited = uncredited, credit
        self.uncredited_total = 0.0

    def reset(self) -> None:
        self.uncredited_total = self.cold

    def credit(self) -> float:
        return self.credited

    def __enter__(self) -> None:
        self.active = True

    def __exit__(self, *exc_info: object) -> None:
        self.active = False


def test_the_factor_is_the_median_pair_and_bursts_of_load_do_not_move_it(monkeypatch) -> None:
    """Base step 10 ms; the trial's calls, 4 ms cold, really add 6 ms (a factor of 1.5) and it credits
    1 ms of other calls it also runs; every third pair a burst of load adds 30 ms to the trial's step,
    and the machine slows by 1% a pair. The mean of the pairs would say ~4.3; their median says 1.5."""
    clock = Clock()
    monkeypatch.setattr(step_timing.time, "perf_counter", clock)
    baseline, trial = Mode(), Mode(uncredited=0.004, credit=0.001)
    steps = 0

    def step() -> None:
        nonlocal steps
        pair, second = divmod(steps, 2)
        slow = 1 + 0.01 * pair
        seconds = 0.010 * slow + (0.006 + 0.001) * trial.active
        if pair % 3 == 1 and second == 1:
            seconds += 0.030
        clock.now += seconds
        steps += 1

    scale = paired_scale(paired_steps(step, 16, "cpu", baseline, trial, trial))  # type: ignore[arg-type]
    assert steps == 2 * 17  # a warm-up pair first
    assert scale == pytest.approx(1.5, abs=0.05)


def test_no_uncredited_calls_give_no_factor(monkeypatch) -> None:
    monkeypatch.setattr(step_timing.time, "perf_counter", Clock())
    none = Mode()
    assert paired_scale(paired_steps(lambda: None, 4, "cpu", none, none, none)) is None  # type: ignore[arg-type]
