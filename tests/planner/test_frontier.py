"""The frontier: monotone, non-dominated, ends at the most accurate and the fastest plans; a PNG plot."""

from __future__ import annotations

import itertools

import pytest
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.planner.frontier import frontier
from moeqos.planner.plot import plot_frontier
from moeqos.planner.solver import PlanRequest, solve

from tests.planner.planner_fixtures import synthetic_profile

PRECISIONS = (Precision.BF16, Precision.INT8, Precision.INT4, Precision.INT2)


@pytest.fixture(scope="module")
def profile():
    bf16 = synthetic_profile().model.expert_bytes(Precision.BF16)
    return synthetic_profile(
        4,
        6,
        PRECISIONS,
        ("cuda:0", "cpu"),
        seed=11,
        quality_plans=12,
        budgets={"cuda:0": 6 * bf16, "cpu": 30 * bf16},
    )


def test_frontier_is_monotone_and_non_dominated(profile) -> None:
    points = frontier(profile, points=12)
    assert len(points) >= 3
    speeds = [p.predicted_tokens_per_s for p in points]
    ppl = [p.predicted_perplexity for p in points]
    assert speeds == sorted(speeds) and len(set(speeds)) == len(speeds)
    assert all(later > earlier for earlier, later in itertools.pairwise(ppl))  # faster => worse
    for a in points:
        assert not any(
            b.predicted_tokens_per_s >= a.predicted_tokens_per_s
            and b.predicted_perplexity < a.predicted_perplexity
            for b in points
            if b is not a
        )


def test_frontier_ends_are_the_most_accurate_and_fastest_plans(profile) -> None:
    points = frontier(profile, points=6)
    fastest = solve(PlanRequest(profile, QosTarget(objective=Objective.SPEED)))
    accurate = solve(PlanRequest(profile, QosTarget(objective=Objective.QUALITY)))
    assert points[-1].predicted_tokens_per_s == pytest.approx(fastest.predicted_tokens_per_s, rel=5e-3)
    assert points[0].predicted_perplexity == pytest.approx(accurate.predicted_perplexity, rel=5e-3)
    for point in points:
        for tier, used in point.bytes_per_tier.items():
            assert used <= next(b.budget_bytes for b in profile.tiers if b.name == tier)


def test_frontier_plot_writes_a_png(profile, tmp_path) -> None:
    path = plot_frontier(frontier(profile, points=4), tmp_path / "frontier.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frontier_samples_the_lossy_end_evenly_in_perplexity(profile, monkeypatch) -> None:
    """Half the inner points are asked for with perplexity ceilings evenly spaced in log-perplexity
    between the two ends, so the lossy end, where tokens/s floors put few points, is sampled too."""
    import math

    import moeqos.planner.frontier as module

    asked: list[QosTarget] = []

    def recording_solve(request, latency=None, quality=None):
        asked.append(request.target)
        return solve(request, latency, quality)

    monkeypatch.setattr(module, "solve", recording_solve)
    points = frontier(profile, points=12)
    ceilings = [t.max_perplexity for t in asked if t.max_perplexity is not None]
    floors = [t.min_tokens_per_s for t in asked if t.min_tokens_per_s is not None]
    assert len(ceilings) == 5 and len(floors) == 5
    logs = [math.log(c) for c in ceilings]
    steps = [b - a for a, b in itertools.pairwise(logs)]
    assert all(step == pytest.approx(steps[0]) and step > 0 for step in steps)
    ends = math.log(points[0].predicted_perplexity), math.log(points[-1].predicted_perplexity)
    assert logs[0] - ends[0] == pytest.approx(steps[0]) and ends[1] - logs[-1] == pytest.approx(steps[0])
