"""The frontier section's solve time is the solve's alone (it read 186 s for a ~1 s solve: the profile
and the fitted models, measured on first use, ran inside its clock)."""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path

from moeqos.bench.context import BenchContext
from moeqos.bench.settings import QUICK
from moeqos.planner import frontier


def test_the_frontier_clock_starts_after_the_profile_and_models(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    def slow_models(self: BenchContext) -> tuple[None, None]:
        time.sleep(0.3)  # a profile measured on first use
        return None, None

    models = cached_property(slow_models)  # as the context's own: computed once, on first use
    models.__set_name__(BenchContext, "models")
    monkeypatch.setattr(BenchContext, "models", models)
    monkeypatch.setattr(BenchContext, "profile", property(lambda self: None))
    monkeypatch.setattr(BenchContext, "budgets", property(lambda self: ()))
    monkeypatch.setattr(frontier, "frontier", lambda *args, **kwargs: [])  # the solve: instant here
    context = BenchContext(tiny_model, QUICK, tmp_path, "test")
    assert context.frontier == []
    assert context.frontier_seconds < 0.1
