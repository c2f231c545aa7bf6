"""The `quality` section's contenders and statistics (moeqos.bench.quality_plans), pure and fast."""

from __future__ import annotations

import math

import pytest
from moeqos.bench.quality_plans import (
    frequency_pick,
    int4_count,
    mape_of_increase,
    random_pick,
    spearman,
    with_int4,
)
from moeqos.core.precision import Precision


def _int4_cells(plan) -> set[tuple[int, int]]:
    return {cell for cell, a in plan.items() if a.precision == Precision.INT4}


def test_int4_count_rounds_the_share_of_all_experts():
    assert [int4_count(30, 8, s) for s in (0.25, 0.5, 0.75)] == [60, 120, 180]
    assert int4_count(3, 3, 0.5) == 4  # 4.5 rounds to even


def test_with_int4_puts_exactly_the_cells_in_int4_on_the_tier():
    plan = with_int4(2, 3, [(0, 1), (1, 2)], "cpu")
    assert _int4_cells(plan) == {(0, 1), (1, 2)}
    assert {a.tier for a in plan.counts()} == {"cpu"}
    assert plan.counts()[next(a for a in plan.counts() if a.precision == Precision.BF16)] == 4


def test_random_pick_has_the_count_is_seeded_and_seeds_differ():
    picks = [random_pick(6, 4, 10, seed, "cpu") for seed in (0, 0, 1)]
    assert all(len(_int4_cells(p)) == 10 for p in picks)
    assert picks[0] == picks[1] and _int4_cells(picks[0]) != _int4_cells(picks[2])


def test_frequency_pick_takes_the_least_called_experts_ties_by_position():
    frequency = ((0.5, 0.1, 0.9), (0.1, 0.7, 0.2))
    assert _int4_cells(frequency_pick(frequency, 2, "cpu")) == {(0, 1), (1, 0)}
    assert _int4_cells(frequency_pick(frequency, 3, "cpu")) == {(0, 1), (1, 0), (1, 2)}


def test_spearman_of_monotone_reversed_and_tied_data():
    assert spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3): average ranks for the tie
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert math.isnan(spearman([1], [2])) and math.isnan(spearman([1, 1], [1, 2]))


def test_mape_of_increase_is_relative_to_the_measured_increase_and_skips_non_increases():
    # increases: predicted 2 vs measured 4 (50% off), predicted 3 vs 2 (50% off); a plan measured
    # below the reference has no increase to be relative to and is skipped
    assert mape_of_increase([12, 13, 11], [14, 12, 9], 10) == pytest.approx(0.5)
    assert math.isnan(mape_of_increase([11], [10], 10))
