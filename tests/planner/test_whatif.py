"""What-if planning from descriptions: analytic profiles, the two example questions, the paper check."""

from __future__ import annotations

import json

import pytest
from moeqos.core.descriptions import HardwareDescription
from moeqos.core.errors import InfeasibleTarget
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.units import parse_bytes
from moeqos.planner.frontier import frontier
from moeqos.planner.paper import PAPER_MAX_TOKENS_PER_S, PAPER_MIN_TOKENS_PER_S, paper_comparison
from moeqos.planner.quality_model import QualityModel
from moeqos.planner.solver import PlanRequest, solve
from moeqos.planner.whatif import HARDWARE, MODELS, analytic_profile, expert_budgets, hardware_named

GIB = 2**30


def _mixtral_on_a100(gpu: int, host: int):
    hardware = HARDWARE["a100-80gb"].with_capacities({"cuda:0": gpu, "cpu": host})
    return analytic_profile(MODELS["mixtral-8x7b"], hardware)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_analytic_profiles_are_consistent(name: str) -> None:
    model = MODELS[name]
    hardware = HARDWARE["cpu-2core"] if name.startswith("smollm") else HARDWARE["h100-80gb"]
    profile = analytic_profile(model, hardware)
    assert all(sum(row) == pytest.approx(model.top_k + model.shared_experts) for row in profile.frequency)
    assert all(row[model.num_experts :] == (1.0,) * model.shared_experts for row in profile.frequency)
    assert max(map(max, profile.frequency)) > min(map(min, profile.frequency))  # mildly skewed
    assert profile.quality_points[0].tokens == 0  # the reference is published, not measured
    device = next(b for b in profile.tiers if b.name == hardware.device)
    assert device.budget_bytes < hardware.tier(hardware.device).capacity_bytes - model.identity().dense_bytes
    result = solve(PlanRequest(profile, QosTarget(objective=Objective.SPEED)))
    assert result.perplexity_is_estimate and "prior" in result.notes


def test_shared_experts_and_head_width_are_counted() -> None:
    """Qwen1.5-MoE-A2.7B: 60 routed experts of 1408 plus a shared one of 5632 (4 slices) run by every
    token; Qwen3-30B-A3B: 32 heads of 128 on a 2048 hidden size (q and o are 2048 x 4096)."""
    qwen15 = MODELS["qwen1.5-moe-a2.7b"].identity()
    assert (qwen15.num_experts, qwen15.top_k, qwen15.intermediate_size) == (64, 8, 1408)
    qwen3 = MODELS["qwen3-30b-a3b"]
    attention = 2 * 2048 * 32 * 128 + 2 * 2048 * 4 * 128
    assert qwen3.dense_params == 48 * (attention + 2 * 2048) + 2048 + 2 * 151936 * 2048


def test_default_model_description_counts_dense_bytes_as_the_executor_holds_them() -> None:
    """smollm2-135m-moe8 as `moeqos model info` and its measured profile report it (110,330,496 bytes):
    54,888,768 bf16 weights (attention, norms, tied embeddings) and 30 x 8 x 576 fp32 router weights."""
    assert MODELS["smollm2-135m-moe8"].identity().dense_bytes == 54_888_768 * 2 + 30 * 8 * 576 * 4


def test_best_perplexity_at_5_tokens_per_s_with_24_gib_gpu_and_64_gib_host() -> None:
    profile = _mixtral_on_a100(24 * GIB, 64 * GIB)
    result = solve(PlanRequest(profile, QosTarget(min_tokens_per_s=5)))
    faster = solve(PlanRequest(profile, QosTarget(min_tokens_per_s=10)))
    assert result.predicted_tokens_per_s >= 5 * (1 - 1e-6)
    assert 3.84 <= result.predicted_perplexity <= faster.predicted_perplexity
    assert result.bytes_per_tier.get("cuda:0", 0) <= next(
        b.budget_bytes for b in profile.tiers if b.name == "cuda:0"
    )
    assert result.bytes_per_tier.get("cpu", 0) <= 64 * GIB
    with pytest.raises(InfeasibleTarget):
        solve(PlanRequest(profile, QosTarget(min_tokens_per_s=1000)))


def test_a_smaller_gpu_budget_gives_a_frontier_no_better() -> None:
    small = frontier(_mixtral_on_a100(16 * GIB, 64 * GIB), points=6)
    large = _mixtral_on_a100(24 * GIB, 64 * GIB)
    assert max(p.predicted_tokens_per_s for p in small) < max(
        p.predicted_tokens_per_s for p in frontier(large, points=3)
    )
    for point in small[1:-1]:
        better = solve(PlanRequest(large, QosTarget(min_tokens_per_s=point.predicted_tokens_per_s)))
        assert better.predicted_perplexity <= point.predicted_perplexity * (1 + 5e-3)


def test_paper_comparison_spans_a_comparable_range() -> None:
    paper, *ours = paper_comparison(points=4)
    assert (paper.min_tokens_per_s, paper.max_tokens_per_s) == (
        PAPER_MIN_TOKENS_PER_S,
        PAPER_MAX_TOKENS_PER_S,
    )
    for span in ours:
        assert 0 < span.min_tokens_per_s < span.max_tokens_per_s
        assert 0 < span.max_ppl_increase < 1
    assert min(s.min_tokens_per_s for s in ours) < 2 * PAPER_MIN_TOKENS_PER_S
    assert max(s.max_tokens_per_s for s in ours) > PAPER_MAX_TOKENS_PER_S


def test_hardware_loads_from_json(tmp_path) -> None:
    data = {
        "name": "box",
        "device": "cpu",
        "tiers": [{"name": "cpu", "capacity_bytes": 8 * GIB, "bandwidth_bps": 20e9}],
        "device_flops": 1e11,
        "host_flops": 1e11,
    }
    path = tmp_path / "box.json"
    path.write_text(json.dumps(data))
    hardware = hardware_named(str(path))
    assert hardware == HardwareDescription.from_dict(data)
    budgets = expert_budgets(MODELS["smollm2-135m-moe8"], hardware)
    assert [b.name for b in budgets] == ["cpu"] and 0 < budgets[0].budget_bytes < parse_bytes("8GiB")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_whatif_offers_group_sizes_with_their_bytes_and_priors(name: str) -> None:
    """int4 with groups of 32, 64 and 128 (issue 20): each charged its scales and zeros, the smaller
    group dearer in bytes and better in the prior; int3/int2 at their bit-packed size (issue 18)."""
    model = MODELS[name]
    hardware = HARDWARE["cpu-2core"] if name.startswith("smollm") else HARDWARE["h100-80gb"]
    profile = analytic_profile(model, hardware)
    size = {c.precision: c.bytes for c in profile.call_costs if c.tier == hardware.device}
    g32, g64, g128 = Precision.INT4_G32, Precision.INT4, Precision.INT4_G128
    assert size[g32] > size[g64] > size[g128] > size[Precision.INT3] > size[Precision.INT2]
    assert size[Precision.INT2] <= 0.56 * size[g64]
    quality = QualityModel.fit(profile)
    share = [quality.expert_terms(p).sum() for p in (g32, g64, g128)]
    assert share == sorted(share) and share[0] < share[2]
