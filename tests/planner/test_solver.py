"""The MILP solver against brute force on small instances, plus budgets, pins and infeasible targets."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from moeqos.core.errors import InfeasibleTarget, InvalidArgument
from moeqos.core.plan import Assignment, parse_plan
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.tier import TierBudget
from moeqos.planner.latency_model import LatencyModel
from moeqos.planner.quality_model import QualityModel
from moeqos.planner.solver import PlanRequest, PlanResult, solve

from tests.planner.planner_fixtures import REFERENCE_PPL, synthetic_profile, true_log_increase

P = Precision
SMALL_CASES = [
    ((P.BF16, P.INT8, P.INT4), ("cuda:0", "cpu")),
    ((P.BF16, P.INT4), ("cuda:0", "cpu", "disk")),  # no pool slots: every disk call misses (linear)
]


def brute_force(profile: Profile, budgets: dict[str, int], precisions: tuple[P, ...], tiers: tuple[str, ...]):
    """Every plan of the instance: [M] seconds per token, [M] perplexity, [M] feasible-in-budget."""
    latency, quality = LatencyModel.fit(profile), QualityModel.fit(profile)
    options = [Assignment(p, t) for t in tiers for p in precisions]
    freq = np.asarray(profile.frequency).reshape(-1)  # [N]
    cost = np.array(
        [
            [
                f
                * (
                    latency.call_seconds(a.precision, a.tier)
                    + (latency.load_seconds(a.precision) if a.tier == "disk" else 0)
                )
                for a in options
            ]
            for f in freq
        ]
    )  # [N, K]
    logp = np.stack([quality.expert_terms(a.precision).reshape(-1) for a in options], axis=1)  # [N, K]
    nbytes = np.array([latency.expert_bytes[a.precision] for a in options])  # [K]
    choices = np.array(list(itertools.product(range(len(options)), repeat=freq.size)))  # [M, N]
    rows = np.arange(freq.size)
    seconds = profile.fixed_seconds + cost[rows, choices].sum(axis=1)
    ppl = quality.reference_perplexity * np.exp(
        quality.log_increase_of_terms(logp[rows, choices].sum(axis=1))
    )
    fits = np.ones(len(choices), dtype=bool)
    for tier, budget in budgets.items():
        used = (nbytes[choices] * np.array([a.tier == tier for a in options])[choices]).sum(axis=1)
        fits &= used <= budget
    return seconds, ppl, fits


def _instance(seed: int, precisions: tuple[P, ...], tiers: tuple[str, ...]) -> tuple[Profile, dict[str, int]]:
    rng = np.random.default_rng(seed)
    probe = synthetic_profile(2, 3, precisions, tiers, seed=seed)
    bf16 = probe.model.expert_bytes(P.BF16)
    budgets = {
        "cuda:0": int(rng.uniform(1, 4) * bf16),
        "cpu": int(rng.uniform(2, 5) * bf16),
        "disk": 10 * bf16,
    }
    budgets = {t: budgets[t] for t in tiers}
    return synthetic_profile(2, 3, precisions, tiers, seed=seed, budgets=budgets, quality_plans=8), budgets


@pytest.mark.parametrize("precisions, tiers", SMALL_CASES)
@pytest.mark.parametrize("seed", range(4))
def test_milp_matches_brute_force_for_both_objectives(precisions, tiers, seed: int) -> None:
    profile, budgets = _instance(seed, precisions, tiers)
    seconds, ppl, fits = brute_force(profile, budgets, precisions, tiers)
    fastest, slowest = seconds[fits].min(), seconds[fits].max()
    floor = 1 / (fastest + 0.5 * (slowest - fastest))
    ceiling = float(np.quantile(ppl[fits], 0.4))
    for target in (QosTarget(min_tokens_per_s=floor), QosTarget(max_perplexity=ceiling)):
        result = solve(PlanRequest(profile, target, tolerance=1e-9))
        ok = fits & (1 / seconds >= floor if target.min_tokens_per_s else ppl <= ceiling)
        if target.effective_objective == Objective.QUALITY:
            assert result.predicted_perplexity == pytest.approx(ppl[ok].min(), rel=1e-7)
            assert result.predicted_tokens_per_s >= floor * (1 - 1e-9)
        else:
            assert 1 / result.predicted_tokens_per_s == pytest.approx(seconds[ok].min(), rel=1e-7)
            assert result.predicted_perplexity <= ceiling * (1 + 1e-9)
        _assert_within_budgets(result, budgets)


@pytest.mark.parametrize("seed", range(3))
def test_identical_experts_aggregate_into_integer_counts_and_still_match_brute_force(seed: int) -> None:
    precisions, tiers = (P.BF16, P.INT8, P.INT4), ("cuda:0", "cpu")
    profile, budgets = _instance(seed, precisions, tiers)
    same = {p: tuple((0.3 / p.bits,) * 3 for _ in range(2)) for p in precisions}
    profile = replace(profile, frequency=((2 / 3,) * 3,) * 2, quant_error=same)  # 6 interchangeable experts
    seconds, ppl, fits = brute_force(profile, budgets, precisions, tiers)
    floor = 2 / (seconds[fits].min() + seconds[fits].max())
    result = solve(PlanRequest(profile, QosTarget(min_tokens_per_s=floor), tolerance=1e-9))
    assert result.predicted_perplexity == pytest.approx(ppl[fits & (1 / seconds >= floor)].min(), rel=1e-7)
    _assert_within_budgets(result, budgets)


@pytest.mark.parametrize("seed", range(2))
def test_a_perplexity_cap_holds_when_damage_compounds(seed: int) -> None:
    """With a fitted compounding (log ppl = D + kappa D^2) the cap on D (term_cap) is exact: the
    fastest plan within the ceiling is the brute force's."""
    precisions, tiers = SMALL_CASES[0]
    profile, budgets = _instance(seed, precisions, tiers)
    points = []
    for q in profile.quality_points:
        d = true_log_increase(profile, parse_plan(q.plan_spec, 2, 3, profile.hardware.device))
        points.append(replace(q, perplexity=REFERENCE_PPL * math.exp(d + 2.0 * d * d)))
    profile = replace(profile, quality_points=tuple(points))
    assert QualityModel.fit(profile).compounding > 0
    seconds, ppl, fits = brute_force(profile, budgets, precisions, tiers)
    ceiling = float(np.quantile(ppl[fits], 0.4))
    result = solve(PlanRequest(profile, QosTarget(max_perplexity=ceiling), tolerance=1e-9))
    assert 1 / result.predicted_tokens_per_s == pytest.approx(
        seconds[fits & (ppl <= ceiling)].min(), rel=1e-7
    )
    assert result.predicted_perplexity <= ceiling * (1 + 1e-9)


def test_unreachable_floor_raises_with_the_fastest_plan_as_closest() -> None:
    profile, budgets = _instance(1, (P.BF16, P.INT4), ("cuda:0", "cpu"))
    seconds, _, fits = brute_force(profile, budgets, (P.BF16, P.INT4), ("cuda:0", "cpu"))
    best = 1 / seconds[fits].min()
    with pytest.raises(InfeasibleTarget) as caught:
        solve(PlanRequest(profile, QosTarget(min_tokens_per_s=best * 1.5), tolerance=1e-9))
    closest = caught.value.closest
    assert closest["predicted_tokens_per_s"] == pytest.approx(best, rel=1e-7)
    assert {"perplexity_is_estimate", "plan_spec", "bytes_per_tier", "predicted_perplexity"} <= set(closest)
    assert "closest" in str(caught.value)


def test_unreachable_ceiling_raises_with_the_most_accurate_plan_as_closest() -> None:
    profile, _ = _instance(2, (P.BF16, P.INT8, P.INT4), ("cuda:0", "cpu"))
    lossy = frozenset({P.INT8, P.INT4})
    with pytest.raises(InfeasibleTarget) as caught:
        solve(PlanRequest(profile, QosTarget(max_perplexity_increase=0.0), allowed_precisions=lossy))
    most_accurate = solve(
        PlanRequest(profile, QosTarget(objective=Objective.QUALITY), allowed_precisions=lossy)
    )
    closest = caught.value.closest
    assert closest["predicted_perplexity"] == pytest.approx(most_accurate.predicted_perplexity, rel=5e-3)
    assert closest["predicted_perplexity"] > QualityModel.fit(profile).reference_perplexity


def test_budgets_that_hold_nothing_raise_without_a_closest_point() -> None:
    profile = synthetic_profile(2, 3, (P.BF16, P.INT4), ("cpu",), budgets={"cpu": 1000})
    with pytest.raises(InfeasibleTarget) as caught:
        solve(PlanRequest(profile, QosTarget(min_tokens_per_s=1)))
    assert caught.value.closest == {}


def test_pins_first_match_wins_and_precision_only_pins_leave_the_tier_free() -> None:
    profile, budgets = _instance(3, (P.BF16, P.INT8, P.INT4), ("cuda:0", "cpu"))
    pins = (
        PlacementRule.parse("L0.E0=int8@cpu"),
        PlacementRule.parse("L0.E*=bf16"),
        PlacementRule.parse("L1.E2=int4"),
    )
    result = solve(PlanRequest(profile, QosTarget(objective=Objective.SPEED), pins=pins))
    assert result.plan[0, 0] == Assignment(P.INT8, "cpu")
    assert all(result.plan[0, e].precision == P.BF16 for e in (1, 2))
    assert result.plan[1, 2].precision == P.INT4
    _assert_within_budgets(result, budgets)


def test_pin_to_an_unavailable_option_is_invalid() -> None:
    profile, _ = _instance(0, (P.BF16, P.INT4), ("cuda:0", "cpu"))
    with pytest.raises(InvalidArgument):
        solve(PlanRequest(profile, QosTarget(min_tokens_per_s=1), pins=(PlacementRule.parse("L0.E0=int2"),)))


def test_explicit_budgets_and_allowed_sets_are_respected() -> None:
    profile = synthetic_profile(4, 8, (P.BF16, P.INT8, P.INT4), ("cuda:0", "cpu"), quality_plans=10, seed=4)
    bf16 = profile.model.expert_bytes(P.BF16)
    budgets = (TierBudget("cuda:0", 7 * bf16), TierBudget("cpu", 40 * bf16))
    request = PlanRequest(
        profile,
        QosTarget(max_perplexity_increase=0.5),
        budgets,
        allowed_precisions=frozenset({P.BF16, P.INT8}),
    )
    result = solve(request)
    assert {a.precision for a in result.plan.counts()} <= {P.BF16, P.INT8}
    _assert_within_budgets(result, {b.name: b.budget_bytes for b in budgets})


def test_disk_pool_predictions_are_honest_and_meet_the_floor() -> None:
    profile = synthetic_profile(
        4,
        8,
        (P.BF16, P.INT4),
        ("cpu", "disk"),
        quality_plans=6,
        seed=9,
        pool_slots=6,
        budgets={"cpu": 12 * synthetic_profile().model.expert_bytes(P.INT4)},
    )
    latency = LatencyModel.fit(profile)
    slowest = solve(PlanRequest(profile, QosTarget(objective=Objective.QUALITY)))
    fastest = solve(PlanRequest(profile, QosTarget(objective=Objective.SPEED)))
    floor = math.sqrt(slowest.predicted_tokens_per_s * fastest.predicted_tokens_per_s)
    result = solve(PlanRequest(profile, QosTarget(min_tokens_per_s=floor)))
    assert result.predicted_tokens_per_s == pytest.approx(latency.predict_tokens_per_s(result.plan))
    assert result.predicted_tokens_per_s >= floor * (1 - 1e-6)
    assert any(a.tier == "disk" for a in result.plan.counts())
    assert "LRU pool of 6 slots" in result.notes


def _assert_within_budgets(result: PlanResult, budgets: dict[str, int]) -> None:
    for tier, used in result.bytes_per_tier.items():
        assert used <= budgets[tier], f"{tier}: {used} > {budgets[tier]}"


def _offload_profile():
    return synthetic_profile(
        4,
        8,
        (P.BF16, P.INT4),
        ("cpu", "disk"),
        quality_plans=6,
        seed=9,
        budgets={"cpu": 12 * synthetic_profile().model.expert_bytes(P.BF16)},
    )


def test_a_quality_plan_that_offloads_says_so_and_excluding_disk_fits_by_precision() -> None:
    profile = _offload_profile()
    offloaded = solve(PlanRequest(profile, QosTarget(objective=Objective.QUALITY)))
    on_disk = sum(n for a, n in offloaded.plan.counts().items() if a.tier == "disk")
    assert on_disk > 0 and f"offload: {on_disk} experts on the disk tier" in offloaded.notes
    assert "--no-offload" in offloaded.notes
    fitted = solve(
        PlanRequest(profile, QosTarget(objective=Objective.QUALITY), allowed_tiers=frozenset({"cpu"}))
    )
    assert {a.tier for a in fitted.plan.counts()} == {"cpu"} and "offload" not in fitted.notes
    assert any(a.precision == P.INT4 for a in fitted.plan.counts())  # it quantizes instead


def test_a_plan_the_linear_terms_underprice_is_replaced_by_one_solved_under_a_tightened_cap(
    monkeypatch,
) -> None:
    """When the model's own evaluation puts the plan the MILP's linear cap allowed over the ceiling (a
    fit whose terms under-price plans: here every predicted log increase x priced 1.3 x + x^2), the
    search shrinks the cap and solves again instead of answering InfeasibleTarget."""
    from moeqos.planner import solver

    precisions, tiers = SMALL_CASES[0]
    profile, budgets = _instance(0, precisions, tiers)
    reference = QualityModel.fit(profile).reference_perplexity
    honest = solver.evaluate

    def underpriced(plan, *args, **kwargs):
        result = honest(plan, *args, **kwargs)
        increase = max(math.log(result.predicted_perplexity / reference), 0.0)
        return replace(result, predicted_perplexity=reference * math.exp(1.3 * increase + increase**2))

    _, ppl, fits = brute_force(profile, budgets, precisions, tiers)
    log_increase = np.log(ppl[fits] / reference)
    ceiling = float(reference * math.exp(np.quantile(1.3 * log_increase + log_increase**2, 0.5)))
    monkeypatch.setattr(solver, "evaluate", underpriced)
    monkeypatch.setattr(solver, "TIGHTEN_ITERATIONS", 0)
    with pytest.raises(InfeasibleTarget):
        solve(PlanRequest(profile, QosTarget(max_perplexity=ceiling), tolerance=1e-9))
    monkeypatch.setattr(solver, "TIGHTEN_ITERATIONS", 3)
    result = solve(PlanRequest(profile, QosTarget(max_perplexity=ceiling), tolerance=1e-9))
    assert result.predicted_perplexity <= ceiling * (1 + 1e-6)
    _assert_within_budgets(result, budgets)
