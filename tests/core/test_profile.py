"""The Profile type round-trips through JSON and checks its shapes."""

import pytest
from moeqos.core.precision import Precision
from moeqos.core.profile import CallCost, HardwareIdentity, LoadCost, ModelIdentity, Profile, QualityPoint
from moeqos.core.tier import TierBudget


def make_profile(layers=2, experts=3, **overrides):
    model = ModelIdentity("tiny", "abc", layers, experts, 2, 64, 128, 256, 1000)
    fields = dict(
        model=model,
        hardware=HardwareIdentity("cpu", "test cpu", "host", 2, "2.13.0"),
        calibration_corpus="ptb:train",
        calibration_tokens=512,
        frequency=tuple(tuple(2 / experts for _ in range(experts)) for _ in range(layers)),
        fixed_seconds=0.01,
        call_costs=(
            CallCost(Precision.BF16, "cpu", 49152, 1e-4),
            CallCost(Precision.INT4, "cpu", 13824, 5e-5),
        ),
        load_costs=(LoadCost(Precision.INT4, 13824, 1e-3),),
        quant_error={Precision.INT4: tuple(tuple(0.1 for _ in range(experts)) for _ in range(layers))},
        quality_points=(
            QualityPoint("bf16@cpu", 12.0, "ptb:valid", 1024),
            QualityPoint("int4@cpu", 13.0, "ptb:valid", 1024),
        ),
        tiers=(TierBudget("cpu", 1 << 30), TierBudget("disk", 1 << 34)),
        disk_pool_slots=4,
        measured_at="2026-11-25T00:00:00Z",
    )
    fields.update(overrides)
    return Profile(**fields)


def test_json_round_trip():
    profile = make_profile()
    assert Profile.from_json(profile.to_json()) == profile


def test_derived_values():
    profile = make_profile()
    assert profile.precisions == [Precision.BF16, Precision.INT4]
    assert profile.reference_perplexity() == 12.0
    assert profile.expert_bytes()[Precision.BF16] == 3 * 64 * 128 * 2


def test_wrong_frequency_shape_is_rejected():
    with pytest.raises(ValueError, match="frequency"):
        make_profile(frequency=((1.0, 1.0),))


def test_unknown_version_is_rejected():
    data = make_profile().to_dict()
    data["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        Profile.from_dict(data)


def test_the_reference_is_the_most_precise_uniform_float_plan():
    points = (
        QualityPoint("int8@cpu", 11.0, "ptb:valid", 1024),
        QualityPoint("fp32@cpu", 12.5, "ptb:valid", 1024),
        QualityPoint("bf16@cpu", 12.0, "ptb:valid", 1024),
        QualityPoint("int4@cpu,L0.E*=bf16", 10.0, "ptb:valid", 1024),
    )
    reference = make_profile(quality_points=points).reference_point()
    assert reference is not None and reference[1] is Precision.FP32
    assert make_profile(quality_points=points).reference_perplexity() == 12.5
    int8_only = (QualityPoint("int8@cpu", 11.0, "ptb:valid", 1024),)
    assert make_profile(quality_points=int8_only).reference_point() is None  # int8 is not a reference
