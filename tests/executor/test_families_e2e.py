"""profile -> plan -> apply -> generate -> evaluate on a tiny checkpoint of every family, through the
real planner (its solver on the measured profile: the fastest plan within a budget of all-int4). Marked
slow (about 60 s a family on 2 busy cores, most of it the profile's cost measurements): `pytest tests/executor/test_families_e2e.py -m slow`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.tier import TierBudget
from moeqos.executor.adapters import read_model
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.sampling import SamplingParams
from moeqos.executor.tiny_families import family_names, make_tiny
from moeqos.planner.solver import PlanRequest, solve

from tests.executor.tiny import prompt_ids

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", family_names())
def test_profile_plan_apply_generate_evaluate(family: str, tmp_path: Path) -> None:
    directory = make_tiny(family, tmp_path / family)
    spec = read_model(directory)[2]
    config = ExecutorConfig(model_dir=directory, variant_cache_dir=tmp_path / "variants")
    with ExecutorRuntime.load(config) as runtime:
        calibration = prompt_ids(96, seed=1)[0].tolist()
        shape = (spec.num_layers, spec.num_experts)
        profile = runtime.profile(
            calibration,
            "ids",
            max_tokens=96,
            repeats=1,
            capture_tokens=32,
            window=48,
            precisions=(Precision.BF16, Precision.INT4),
            quality_plans=[Plan.uniform(*shape, p, "cpu") for p in (Precision.BF16, Precision.INT4)],
            quality_ids=prompt_ids(64, seed=3)[0].tolist(),
            quality_corpus="ids:valid",
            sensitivity_tokens=16,
        )
        for row in profile.frequency:  # shared slices run for every token: frequency 1 each
            assert len(row) == spec.num_experts
            assert math.isclose(sum(row), spec.top_k + spec.num_shared, rel_tol=1e-9)
            assert row[spec.num_routed :] == (1.0,) * spec.num_shared
        int4 = runtime.model.expert_bytes(Precision.INT4)
        budget = (TierBudget("cpu", int4 * spec.num_layers * spec.num_experts),)  # room for all-int4 at most
        result = solve(PlanRequest(profile, QosTarget(objective=Objective.SPEED), budgets=budget))
        switch = runtime.apply_plan(result.plan)
        assert runtime.plan == result.plan and switch.report.experts_changed > 0
        *_, last = runtime.generate(prompt_ids(8)[0].tolist(), SamplingParams(max_tokens=6))
        assert (
            last.stats is not None and 1 <= last.stats.generated_tokens <= 6
        )  # a random model may end early
        assert last.stats.plan_spec == result.plan.to_spec()
        evaluation = runtime.evaluate(prompt_ids(80, seed=2)[0].tolist(), context_length=40, decode_tokens=4)
        assert math.isfinite(evaluation.perplexity) and evaluation.perplexity > 1
