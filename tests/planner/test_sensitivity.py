"""The output-KL signal in the quality model and the planner, on a synthetic profile whose truth is known.

The truth: int4 on expert e of layer l adds damage[l] * sqrt(freq[l][e]) / sum_e' sqrt(freq[l][e']) to
log-perplexity (the share law of moeqos.core.sensitivity), and the
profile measured layer_kl[int4] = damage exactly. The weight-space error is made *inverse* to the damage
(the layers that look worst in isolation matter least), and the rarely called experts sit in the layers
that matter most, so both the old proxy (freq * err) and a frequency-only ranking choose badly.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from moeqos.core.plan import Assignment, Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile, QualityPoint
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.sensitivity import (
    ALONE_FLOOR,
    alone_weights_of,
    expert_signal,
    loud_layers,
    safest_first,
    shrunk,
    signal_grids,
)
from moeqos.core.tier import TierBudget
from moeqos.planner.quality_model import ESTIMATE_THRESHOLD, QualityModel
from moeqos.planner.solver import PlanRequest, solve

from tests.planner.planner_fixtures import REFERENCE_PPL, synthetic_profile

LAYERS, EXPERTS = 6, 4
DAMAGE = np.array([0.002, 0.004, 0.01, 0.03, 0.06, 0.12])  # [L] true int4 log-ppl increase per layer
ERROR = 0.01 / DAMAGE  # [L] inverted: the weight error ranks the layers backwards


def _frequency() -> np.ndarray:
    """[L, E]: a skew that puts the least-called experts in the most damaging layers."""
    skew = np.linspace(0.2, 1.0, LAYERS)[::-1][:, None]  # rare experts deep in the model
    raw = np.tile(np.array([1.0, 1.0, 1.0, 1.0]), (LAYERS, 1)) * skew
    raw[:, 0] *= 0.3
    return raw / raw.sum(axis=1, keepdims=True) * 2  # each row sums to top_k = 2


def true_log_increase(frequency: np.ndarray, plan: Plan) -> float:
    share = np.sqrt(frequency) / np.sqrt(frequency).sum(axis=1, keepdims=True)  # [L, E]
    return float(
        sum(
            DAMAGE[layer] * share[layer][e] for (layer, e), a in plan.items() if a.precision == Precision.INT4
        )
    )


def _plan(cells: set[tuple[int, int]]) -> Plan:
    lossy, full = Assignment(Precision.INT4, "cpu"), Assignment(Precision.BF16, "cpu")
    return Plan(
        tuple(
            tuple(lossy if (layer, e) in cells else full for e in range(EXPERTS)) for layer in range(LAYERS)
        )
    )


def known_profile(with_kl: bool = True) -> Profile:
    base = synthetic_profile(
        LAYERS, EXPERTS, (Precision.BF16, Precision.INT4), tiers=("cpu",), quality_plans=0
    )
    frequency = _frequency()
    error = np.repeat(ERROR[:, None], EXPERTS, axis=1)  # [L, E] identical experts within a layer
    rng = np.random.default_rng(3)
    plans = [Plan.uniform(LAYERS, EXPERTS, p, "cpu") for p in (Precision.BF16, Precision.INT4)]
    cells = [(layer, e) for layer in range(LAYERS) for e in range(EXPERTS)]
    for share in (0.25, 0.5, 0.75):
        picks = rng.permutation(len(cells))[: round(share * len(cells))]
        plans.append(_plan({cells[i] for i in picks}))
    points = tuple(
        QualityPoint(p.to_spec(), REFERENCE_PPL * math.exp(true_log_increase(frequency, p)), "ptb:valid", 512)
        for p in plans
    )
    return dataclasses.replace(
        base,
        frequency=tuple(map(tuple, frequency)),
        quant_error={Precision.BF16: tuple(map(tuple, error * 0)), Precision.INT4: tuple(map(tuple, error))},
        layer_kl={Precision.INT4: tuple(DAMAGE)} if with_kl else {},
        sensitivity_tokens=128 if with_kl else 0,
        quality_points=points,
    )


def _plan_at_half(profile: Profile) -> Plan:
    sizes = profile.expert_bytes()
    count = LAYERS * EXPERTS // 2
    budget = count * sizes[Precision.INT4] + (LAYERS * EXPERTS - count) * sizes[Precision.BF16]
    request = PlanRequest(
        profile,
        QosTarget(objective=Objective.QUALITY),
        (TierBudget("cpu", budget),),
        allowed_precisions=frozenset({Precision.BF16, Precision.INT4}),
    )
    return solve(request).plan


def _frequency_plan(frequency: np.ndarray, count: int) -> Plan:
    order = sorted((frequency[layer][e], layer, e) for layer in range(LAYERS) for e in range(EXPERTS))
    return _plan({(layer, e) for _, layer, e in order[:count]})


def test_signal_shares_layer_kl_by_sqrt_frequency_times_squared_error() -> None:
    signal = expert_signal([[0.5, 1.5]], [[0.2, 0.1]], [0.3])
    weights = [0.5**0.5 * 0.04, 1.5**0.5 * 0.01]
    assert signal[0] == pytest.approx(tuple(0.3 * w / sum(weights) for w in weights))
    assert expert_signal([[0.5, 1.5]], [[0.2, 0.1]], None)[0] == pytest.approx((0.1, 0.15))


def test_unmeasured_precision_borrows_the_nearest_measured_kl_scaled_by_squared_error() -> None:
    frequency = [[1.0, 1.0]]
    errors = {Precision.INT4: [[0.1, 0.1]], Precision.INT3: [[0.2, 0.2]]}
    grids = signal_grids(frequency, errors, {Precision.INT4: [0.01]}, [Precision.INT4, Precision.INT3])
    assert sum(grids[Precision.INT3][0]) == pytest.approx(0.04)  # 0.01 * (0.2 / 0.1)^2
    assert safest_first(((3.0, 1.0), (2.0, 0.5))) == [(1, 1), (0, 1), (1, 0), (0, 0)]


def test_loud_layers_stand_far_above_the_median_layer_loudest_first() -> None:
    quiet = [0.005] * 26
    assert loud_layers([*quiet, 0.054, 0.023, 0.04, 0.063]) == [29, 26, 28]  # 0.023 < 8 x 0.005
    assert loud_layers([0.001] * 30) == [] and loud_layers([0.0] * 4) == []
    assert loud_layers([0.001] * 20 + [1.0, 2.0, 3.0, 4.0, 5.0]) == [24, 23, 22, 21]  # at most MOST_LOUD


def test_a_loud_layer_is_shared_by_its_experts_measured_alone_as_measured() -> None:
    alone = {1: (0.015, -0.002, 0.0, 0.003)}
    weights = alone_weights_of(alone, None, None)
    assert weights[1] == pytest.approx((0.015, ALONE_FLOOR, ALONE_FLOOR, 0.003))  # a gain weighs the floor
    frequency = [[0.25] * 4, [0.25] * 4]
    errors = [[0.1] * 4, [0.1] * 4]
    signal = expert_signal(frequency, errors, [0.01, 0.2], weights)
    assert signal[0] == pytest.approx((0.0025,) * 4)  # a quiet layer: by frequency and error
    assert signal[1] == pytest.approx(tuple(0.2 * w / sum(weights[1]) for w in weights[1]))
    # a precision borrowing the anchor's measurement scales each expert by its squared error ratio
    doubled = alone_weights_of(alone, [[0.1] * 4] * 2, [[0.2, 0.1, 0.1, 0.1]] * 2)
    assert doubled[1] == pytest.approx((0.06, ALONE_FLOOR, ALONE_FLOOR, 0.003))
    grids = signal_grids(
        frequency,
        {Precision.INT4: errors, Precision.INT3: [[0.2, 0.1, 0.1, 0.1]] * 2},
        {Precision.INT4: [0.01, 0.2]},
        [Precision.INT4, Precision.INT3],
        alone,
    )
    assert grids[Precision.INT4][1] == pytest.approx(signal[1])
    assert grids[Precision.INT3][1][0] / grids[Precision.INT3][1][1] == pytest.approx(0.06 / ALONE_FLOOR)


def test_each_layer_measured_alone_is_weighed_against_the_kl_by_its_own_noise() -> None:
    kl, alone = [1.0, 1.0], [0.1, 0.3]  # the KL ranks the layers alike, the text does not
    # by hand: the KL predicts 0.2 each (slope 0.2); the increases stray from it by 0.1 where their noise
    # is 0.05, so r^2 = (2 * (0.01 - 0.0025)) / (2 * 0.04) = 0.1875 and each keeps 0.75 of its measured
    # difference: 0.125 and 0.275, the shape 0.3125 / 0.6875 of the KL's total 2
    assert shrunk(kl, alone, [0.05, 0.05]) == pytest.approx((0.625, 1.375))
    assert shrunk(kl, alone, [0.1, 0.1]) == pytest.approx((1.0, 1.0))  # all noise: the KL kept
    assert shrunk(kl, alone, [0.0, 0.0]) == pytest.approx((0.5, 1.5))  # no noise: as measured
    # a layer measured far above its noise keeps its measurement while a noisy one keeps the KL's
    # prediction: layer 2's 0.3 stands (se 0.001), layer 0's 0.3 (se 1.0) goes back to the prediction,
    # 1/6 (the slope the precise layers give), which is 1.0 of the total 4 once the shape sums 2/3
    held = shrunk([1.0, 1.0, 1.0, 1.0], [0.3, 0.1, 0.3, 0.1], [1.0, 0.001, 0.001, 0.001])
    assert held[2] / held[1] == pytest.approx(3.0, rel=1e-3) and held[0] == pytest.approx(1.0, rel=0.01)
    assert sum(held) == pytest.approx(4.0)
    # a KL that does not rise with the increases predicts nothing: the measurements as they are (floored)
    assert shrunk([1.0, 0.0], [-0.1, 0.2], [0.01, 0.01]) == pytest.approx(
        (ALONE_FLOOR / (0.2 + ALONE_FLOOR), 0.2 / (0.2 + ALONE_FLOOR))
    )
    assert shrunk([0.0, 0.0], alone, [0.05, 0.05]) == (0.0, 0.0)
    mixed = shrunk(kl, alone, [0.05, 0.05])
    frequency, errors = [[1.0, 1.0]] * 2, {Precision.INT4: [[0.1, 0.1]] * 2, Precision.INT3: [[0.2, 0.2]] * 2}
    grids = signal_grids(
        frequency, errors, {Precision.INT4: kl}, [Precision.INT4, Precision.INT3], None, alone, [0.05, 0.05]
    )
    assert [sum(row) for row in grids[Precision.INT4]] == pytest.approx(mixed)
    # a precision borrowing the anchor borrows the shaped one, scaled by its squared error ratio
    assert [sum(row) for row in grids[Precision.INT3]] == pytest.approx([4 * m for m in mixed])


def test_kl_signal_recovers_the_truth_and_labels_the_fit_honest() -> None:
    model = QualityModel.fit(known_profile())
    assert model.coefficients[Precision.INT4] == pytest.approx(1.0, rel=1e-6)
    assert model.holdout_error is not None and model.holdout_error < 1e-6
    assert model.trusted and not model.plan_is_estimate(Plan.uniform(LAYERS, EXPERTS, Precision.INT4, "cpu"))
    assert model.corpus == "ptb:valid" and "ptb:valid" in model.basis


def test_the_old_proxy_fits_badly_and_its_predictions_are_labelled_estimates() -> None:
    model = QualityModel.fit(known_profile(with_kl=False))
    assert model.holdout_error is not None and model.holdout_error > ESTIMATE_THRESHOLD
    assert model.plan_is_estimate(Plan.uniform(LAYERS, EXPERTS, Precision.INT4, "cpu"))
    assert not model.plan_is_estimate(Plan.uniform(LAYERS, EXPERTS, Precision.BF16, "cpu"))


def test_plan_from_the_kl_signal_beats_frequency_only_and_the_old_proxy() -> None:
    frequency = _frequency()
    ours = _plan_at_half(known_profile())
    old = _plan_at_half(known_profile(with_kl=False))
    by_frequency = _frequency_plan(frequency, LAYERS * EXPERTS // 2)
    assert sum(a.precision == Precision.INT4 for _, a in ours.items()) == LAYERS * EXPERTS // 2
    truth = {
        name: true_log_increase(frequency, p)
        for name, p in (("ours", ours), ("old", old), ("freq", by_frequency))
    }
    assert truth["ours"] < 0.8 * truth["freq"]
    assert truth["ours"] < 0.8 * truth["old"]
