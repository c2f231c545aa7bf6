"""The quality model: nnls fit recovers known coefficients, leave-one-out error, priors, JSON."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from moeqos.core.dense import DenseCost, DenseElement
from moeqos.core.errors import InvalidArgument
from moeqos.core.plan import Plan, parse_plan
from moeqos.core.precision import Precision
from moeqos.planner.priors import PRIOR_LOG_PPL_INCREASE
from moeqos.planner.quality_model import KAPPAS, MAX_LOG_INCREASE, QualityModel, _leave_one_out

from tests.planner.planner_fixtures import (
    REFERENCE_PPL,
    TRUE_COEFFICIENT,
    synthetic_profile,
    true_log_increase,
)

PRECISIONS = (Precision.BF16, Precision.INT8, Precision.INT4, Precision.INT2)


def test_fit_recovers_coefficients_without_noise() -> None:
    profile = synthetic_profile(3, 4, PRECISIONS, quality_plans=10, seed=5)
    model = QualityModel.fit(profile)
    assert model.fitted == {Precision.INT8, Precision.INT4, Precision.INT2}
    for p in model.fitted:
        assert model.coefficients[p] == pytest.approx(TRUE_COEFFICIENT[p], rel=1e-6)
    assert model.holdout_error is not None and model.holdout_error < 1e-6
    assert model.holdout_points == 9
    assert model.reference_perplexity == REFERENCE_PPL
    assert not model.plan_is_estimate(Plan.uniform(3, 4, Precision.INT4, "cuda:0"))


def test_fit_with_noise_is_close_and_reports_holdout_error() -> None:
    profile = synthetic_profile(3, 4, PRECISIONS, quality_plans=30, seed=6, noise=0.005)
    model = QualityModel.fit(profile)
    assert model.coefficients[Precision.INT4] == pytest.approx(TRUE_COEFFICIENT[Precision.INT4], rel=0.25)
    assert model.coefficients[Precision.INT2] == pytest.approx(TRUE_COEFFICIENT[Precision.INT2], rel=0.1)
    assert model.holdout_error is not None and 0 < model.holdout_error < 0.05
    plan = Plan.uniform(3, 4, Precision.INT4, "cuda:0")
    expected = REFERENCE_PPL * math.exp(true_log_increase(profile, plan))
    assert model.predict_perplexity(plan) == pytest.approx(expected, rel=0.05)


def test_too_few_points_scale_the_priors_and_say_so() -> None:
    profile = synthetic_profile(3, 4, PRECISIONS, quality_plans=2, seed=7)  # reference + 1 plan, 3 precisions
    model = QualityModel.fit(profile)
    assert model.fitted == frozenset() and model.is_estimate
    assert "prior" in model.basis and "scaled" in model.basis and model.holdout_error is None
    measured = profile.quality_points[1]
    plan = parse_plan(measured.plan_spec, 3, 4, "cuda:0")
    assert model.predict_perplexity(plan) == pytest.approx(
        measured.perplexity, rel=1e-9
    )  # one point, one scale
    uniform = Plan.uniform(3, 4, Precision.INT4, "cuda:0")
    ratio = model.predict_log_increase(uniform) / PRIOR_LOG_PPL_INCREASE[Precision.INT4]
    assert model.plan_is_estimate(uniform)
    assert model.predict_log_increase(Plan.uniform(3, 4, Precision.INT2, "cuda:0")) == pytest.approx(
        ratio * PRIOR_LOG_PPL_INCREASE[Precision.INT2]
    )


def test_no_measured_plans_use_the_priors_as_published() -> None:
    profile = synthetic_profile(3, 4, PRECISIONS, quality_plans=1, seed=7)  # the reference only
    model = QualityModel.fit(profile)
    uniform = Plan.uniform(3, 4, Precision.INT4, "cuda:0")
    assert model.is_estimate and model.predict_log_increase(uniform) == pytest.approx(
        PRIOR_LOG_PPL_INCREASE[Precision.INT4]
    )


def test_missing_reference_needs_a_prior() -> None:
    profile = synthetic_profile(quality_plans=0)
    with pytest.raises(InvalidArgument):
        QualityModel.fit(profile)
    model = QualityModel.fit(profile, prior_reference=(7.5, "published"))
    assert model.reference_perplexity == 7.5 and model.is_estimate
    assert model.predict_perplexity(Plan.uniform(2, 3, Precision.BF16, "cpu")) == pytest.approx(7.5)


def test_json_round_trip() -> None:
    profile = synthetic_profile(2, 3, PRECISIONS, quality_plans=8, seed=8, noise=0.01)
    model = QualityModel.fit(profile)
    again = QualityModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    assert again.identity.fingerprint == profile.model.fingerprint
    plan = Plan.uniform(2, 3, Precision.INT2, "cpu")
    assert again.predict_perplexity(plan) == model.predict_perplexity(plan)


def compounded_profile(kappa: float, seed: int = 5):
    """A synthetic profile whose measured plans follow log ppl = D + kappa * D^2 (D: the additive truth)."""
    profile = synthetic_profile(3, 4, PRECISIONS, quality_plans=10, seed=seed)
    points = []
    for q in profile.quality_points:
        d = true_log_increase(profile, parse_plan(q.plan_spec, 3, 4, "cuda:0"))
        points.append(dataclasses.replace(q, perplexity=REFERENCE_PPL * math.exp(d + kappa * d * d)))
    return dataclasses.replace(profile, quality_points=tuple(points))


def test_fit_recovers_how_damage_compounds() -> None:
    kappa = KAPPAS[12]
    model = QualityModel.fit(compounded_profile(kappa))
    assert model.compounding == pytest.approx(kappa)
    for p in model.fitted:
        assert model.coefficients[p] == pytest.approx(TRUE_COEFFICIENT[p], rel=1e-6)
    assert model.holdout_error is not None and model.holdout_error < 1e-6
    additive = QualityModel.fit(compounded_profile(0.0))
    assert additive.compounding == 0.0  # additive data: no compounding is invented


def test_term_cap_inverts_the_link() -> None:
    model = QualityModel.fit(compounded_profile(KAPPAS[12]))
    for cap in (0.0, 0.01, 0.3, 2.0):
        assert model.log_increase_of_terms(model.term_cap(cap)) == pytest.approx(cap)
    assert model.term_cap(0.3) < 0.3  # compounding: less room for damage than the additive model gives


def test_the_link_rises_with_the_terms_when_an_element_measured_better() -> None:
    """A dense precision that measured below the reference makes D negative; with strong compounding
    D + kappa * D^2 fell again there (0.197 at D = -0.019, kappa 588), so the MILP's cap took the gain
    for a loss and the bench's tiny-model planner section found no feasible plan."""
    model = dataclasses.replace(QualityModel.fit(compounded_profile(KAPPAS[12])), compounding=588.0)
    terms = np.linspace(-0.05, 0.05, 41)
    increases = model.log_increase_of_terms(terms)
    assert np.all(np.diff(increases) > 0)
    assert model.log_increase_of_terms(-0.019) == pytest.approx(-0.019)
    for cap in (-0.3, -0.019, 0.0, 0.02):  # a cap below the reference has a D too (it was NaN)
        assert model.log_increase_of_terms(model.term_cap(cap)) == pytest.approx(cap)


def test_a_dense_element_adds_its_measured_increase_outside_the_experts_compounding() -> None:
    """The dense stage measures each element alone, compounding included: a plan changing only that
    element predicts what was measured, and with lossy experts the two increases add (on the default
    model, putting the element into the experts' compounding predicted int4 experts, attention and head
    at perplexity 263, measured 147.6; the sum of the three measured alone gives 141)."""
    base = compounded_profile(KAPPAS[12])
    head = (
        DenseCost(DenseElement.HEAD, Precision.BF16, 2000, 0.001, 0.0),
        DenseCost(DenseElement.HEAD, Precision.INT4, 500, 0.0005, 0.17),
    )
    profile = dataclasses.replace(base, dense_costs=head, dense_precision=Precision.BF16)
    model = dataclasses.replace(QualityModel.fit(profile), compounding=50.0)
    int4_head = ((DenseElement.HEAD, Precision.INT4),)
    alone = Plan.uniform(3, 4, model.reference_precision, "cuda:0").with_dense(int4_head)
    assert model.predict_log_increase(alone) == pytest.approx(0.17)
    lossy = Plan.uniform(3, 4, Precision.INT4, "cuda:0")
    experts = model.predict_log_increase(lossy)
    assert experts > 0.1  # compounded (kappa 50) where the experts' damage is large
    assert model.predict_log_increase(lossy.with_dense(int4_head)) == pytest.approx(experts + 0.17)


def test_a_catastrophic_plan_saturates_instead_of_overflowing() -> None:
    """A random tiny model's int2 plans break it completely: with a strong compounding fit, exp() of the
    predicted or measured log increase would overflow (the bench's frontier section raised OverflowError);
    both saturate at MAX_LOG_INCREASE instead."""
    model = dataclasses.replace(QualityModel.fit(compounded_profile(KAPPAS[12])), compounding=KAPPAS[-1])
    int2 = Plan.uniform(3, 4, Precision.INT2, "cuda:0")
    assert model.predict_log_increase(int2) > MAX_LOG_INCREASE
    assert model.predict_perplexity(int2) == pytest.approx(REFERENCE_PPL * math.exp(MAX_LOG_INCREASE))
    rows = np.zeros((3, len(Precision)))  # [N, P]: each plan's summed terms per precision
    rows[:, list(Precision).index(Precision.INT2)] = (1.0, 2.0, 3.0)
    targets = np.array([400.0, 800.0, 1200.0])  # log increases past exp()'s range
    error = _leave_one_out(rows, targets, model.sensitivity)
    assert error is not None and math.isfinite(error)


def _anchored_profile(kappa4: float, kappa2: float, seed: int = 3):
    """int4 (the anchor: its layer KL measured) and int2 plans on the model's own signal, int4's
    compounding `kappa4`, int2's `kappa2` (int2 far beyond broken, as on the default model)."""
    base = synthetic_profile(3, 4, PRECISIONS, quality_plans=1, seed=seed)
    profile = dataclasses.replace(base, layer_kl={Precision.INT4: (0.01, 0.03, 0.02)})
    sens = QualityModel.fit(profile).sensitivity
    rng = np.random.default_rng(seed)
    points = list(profile.quality_points)
    cells = [(layer, e) for layer in range(3) for e in range(4)]
    for precision, coefficient, kappa in ((Precision.INT4, 2.0, kappa4), (Precision.INT2, 40.0, kappa2)):
        for count in (3, 6, 9, 12):
            chosen = {cells[i] for i in rng.choice(len(cells), count, replace=False)}
            text = ",".join(f"L{layer}.E{e}={precision.value}@cpu" for layer, e in sorted(chosen))
            plan = parse_plan(f"bf16@cpu,{text}", 3, 4, "cpu")
            d = coefficient * sum(sens[precision][layer][e] for layer, e in chosen)
            ppl = REFERENCE_PPL * math.exp(d + kappa * d * d)
            points.append(dataclasses.replace(points[0], plan_spec=plan.to_spec(), perplexity=ppl))
    return dataclasses.replace(profile, quality_points=tuple(points))


def test_compounding_comes_from_the_anchor_precision_plans() -> None:
    """int2's corners compound differently (and are broken): the anchor's kappa and coefficient are
    still recovered exactly, and the leave-one-out check does not count how broken a broken plan is."""
    kappa4 = KAPPAS[20]
    model = QualityModel.fit(_anchored_profile(kappa4, kappa2=0.0))
    assert model.compounding == pytest.approx(kappa4)
    assert model.coefficients[Precision.INT4] == pytest.approx(2.0, rel=1e-6)
    assert "from the int4 plans" in model.basis
    assert model.holdout_error is not None and model.holdout_error < 0.05


def test_broken_plans_count_only_when_predicted_not_broken() -> None:
    rows = np.zeros((3, len(Precision)))  # [N, P]
    rows[:, list(Precision).index(Precision.INT2)] = (1.0, 2.0, 3.0)
    sens = QualityModel.fit(synthetic_profile(quality_plans=1)).sensitivity
    # every plan measured beyond broken (x7, x55, x8100) and predicted beyond it without it: no miss
    assert _leave_one_out(rows, np.array([2.0, 4.0, 9.0]), sens) == 0.0
    # a working plan predicted broken misses by the whole difference
    error = _leave_one_out(rows[:2], np.array([0.1, 4.0]), sens)
    assert error is not None and error > 1.0


def _overlapping_profile(overlap: tuple[float, float, float], coefficient: float = 2.0, seed: int = 4):
    """int4 plans (the anchor) whose damage follows the error-overlap law: per layer (1 - o) of the
    chosen experts' terms plus o times the square of their summed amplitudes, no compounding."""
    base = synthetic_profile(3, 4, PRECISIONS, quality_plans=1, seed=seed)
    profile = dataclasses.replace(base, layer_kl={Precision.INT4: (0.01, 0.03, 0.02)}, error_overlap=overlap)
    sens = QualityModel.fit(profile).sensitivity[Precision.INT4]
    rng = np.random.default_rng(seed)
    points = list(profile.quality_points)
    cells = [(layer, e) for layer in range(3) for e in range(4)]
    for count in (2, 3, 5, 6, 8, 9, 12):
        chosen = {cells[i] for i in rng.choice(len(cells), count, replace=False)}
        d = 0.0
        for layer, o in enumerate(overlap):
            picked = [sens[layer][e] for e in range(4) if (layer, e) in chosen]
            share = sum(picked) / sum(sens[layer])
            d += coefficient * sum(sens[layer]) * ((1 - o) * share + o * share * share)
        text = ",".join(f"L{layer}.E{e}=int4@cpu" for layer, e in sorted(chosen))
        plan = parse_plan(f"bf16@cpu,{text}", 3, 4, "cpu")
        points.append(
            dataclasses.replace(points[0], plan_spec=plan.to_spec(), perplexity=REFERENCE_PPL * math.exp(d))
        )
    return dataclasses.replace(profile, quality_points=tuple(points))


def test_a_layer_whose_experts_errors_overlap_costs_the_square_of_its_quantized_share() -> None:
    """Identical experts make the same error on a token they share (the default model: overlap 0.5), so
    a part of a layer costs less than its share of the whole: fitted with the overlap the law is
    recovered exactly; the additive fit of the same plans compounds to bend it back and misses."""
    profile = _overlapping_profile((0.5, 0.0, 0.9))
    model = QualityModel.fit(profile)
    assert model.overlap == (0.5, 0.0, 0.9)
    assert model.coefficients[Precision.INT4] == pytest.approx(2.0, rel=1e-6)
    assert model.compounding == 0.0
    assert model.holdout_error is not None and model.holdout_error < 1e-6
    additive = QualityModel.fit(dataclasses.replace(profile, error_overlap=()))
    assert additive.holdout_error is not None and additive.holdout_error > 0.05

    terms = model.expert_terms(Precision.INT4)  # [L, E] the MILP's linear bound
    whole = parse_plan("bf16@cpu,L0.E*=int4@cpu", 3, 4, "cpu")
    assert model.predict_log_increase(whole) == pytest.approx(terms[0].sum(), rel=1e-9)  # exact there
    half = parse_plan("bf16@cpu,L0.E0-1=int4@cpu,L1.E0-1=int4@cpu", 3, 4, "cpu")
    bound = terms[0, :2].sum() + terms[1, :2].sum()
    assert model.predict_log_increase(half) < bound  # layer 0 overlaps: below the bound
    alone = parse_plan("bf16@cpu,L1.E0-1=int4@cpu", 3, 4, "cpu")
    assert model.predict_log_increase(alone) == pytest.approx(terms[1, :2].sum(), rel=1e-9)  # no overlap
    again = QualityModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model and again.predict_log_increase(half) == model.predict_log_increase(half)


def _measured_alone_profile(designed: tuple[tuple[str, float], ...] = ()):
    """3 layers x 4 experts with int4's layer KL and each whole layer measured alone in int4 (0.004,
    0.012, 0.006 nats, with so small an error that the signal takes their shape), plus the `designed`
    (plan spec, log increase) measured plans."""
    base = synthetic_profile(3, 4, PRECISIONS, quality_plans=1, seed=3)
    reference = base.quality_points[0]
    points = tuple(
        dataclasses.replace(reference, plan_spec=spec, perplexity=REFERENCE_PPL * math.exp(log))
        for spec, log in designed
    )
    return dataclasses.replace(
        base,
        layer_kl={Precision.INT4: (0.01, 0.03, 0.02)},
        layer_alone=(0.004, 0.012, 0.006),
        layer_alone_error=(1e-5,) * 3,
        quality_points=(reference, *points),
    )


def _whole_layer_log_increases(model: QualityModel) -> list[float]:
    plans = [parse_plan(f"bf16@cpu,L{layer}.E*=int4@cpu", 3, 4, "cpu") for layer in range(3)]
    return [model.predict_log_increase(plan) for plan in plans]


def test_the_layers_measured_alone_are_fitted_plans() -> None:
    """With no designed plan at all, the three layers measured alone fit int4's coefficient (not a
    prior) and each whole layer is predicted at its measurement; they are not held out (the signal
    was shaped by them), so the fit has no cross-validated error and its predictions are estimates."""
    model = QualityModel.fit(_measured_alone_profile())
    assert Precision.INT4 in model.fitted and model.compounding == 0.0
    assert _whole_layer_log_increases(model) == pytest.approx([0.004, 0.012, 0.006], rel=1e-3)
    assert "3 layers measured alone" in model.basis
    assert model.holdout_error is None and model.holdout_points == 0 and model.is_estimate


def test_the_layers_measured_alone_hold_a_noisy_designed_fit_to_a_sane_compounding() -> None:
    """The product's fit on 511 tokens in miniature: the uniform int4 plan and the riskier two layers
    measured alike, the safest layer a gain. Those three alone fit the strongest compounding tried
    (1,800, the whole layers predicted at 0.3-0.6 of what they measured alone); with the layers alone
    in the fit the compounding stays moderate and each layer is predicted near its measurement."""
    designed = (
        ("int4@cpu", 0.022),
        ("bf16@cpu,L1.E*=int4@cpu,L2.E*=int4@cpu", 0.022),
        ("bf16@cpu,L0.E*=int4@cpu", -0.003),
    )
    profile = _measured_alone_profile(designed)
    alone = QualityModel.fit(profile)
    plans_only = QualityModel.fit(dataclasses.replace(profile, layer_alone=(), layer_alone_error=()))
    assert plans_only.compounding == KAPPAS[-1]
    assert _whole_layer_log_increases(plans_only)[0] < 0.5 * 0.004
    assert alone.compounding < 0.05 * KAPPAS[-1]
    assert _whole_layer_log_increases(alone) == pytest.approx([0.004, 0.012, 0.006], rel=0.25)
    assert alone.holdout_points == 3  # the designed plans only
