"""Byte accounting of the precisions, and QoS target validation."""

import math

import pytest
from moeqos.core.precision import Precision, expert_bytes, matrix_bytes
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.tier import TierBudget, validate_tier


def test_matrix_bytes_per_format():
    assert matrix_bytes(16, 64, Precision.FP32) == 16 * 64 * 4
    assert matrix_bytes(16, 64, Precision.BF16) == 16 * 64 * 2
    assert matrix_bytes(16, 64, Precision.INT8) == 16 * 64 + 16 * 2
    # 4-bit codes plus a bf16 scale and zero per group of 64
    assert matrix_bytes(16, 128, Precision.INT4, 64) == 16 * 64 + 2 * 16 * 2 * 2
    # int3 and int2 bit-packed (issue 18): 3 and 2 bits a weight, a bf16 scale and an int8 zero point
    assert matrix_bytes(16, 128, Precision.INT3, 64) == 16 * 128 * 3 // 8 + 2 * 16 * (2 + 1)
    assert matrix_bytes(16, 128, Precision.INT2, 64) == 16 * 128 // 4 + 2 * 16 * (2 + 1)
    # a precision naming its group size keeps it whatever the plan's (issue 20)
    assert matrix_bytes(16, 128, Precision.INT4_G32, 64) == 16 * 64 + 4 * 16 * 2 * 2
    assert matrix_bytes(16, 128, Precision.INT4_G128, 32) == 16 * 64 + 1 * 16 * 2 * 2
    assert matrix_bytes(16, 128, Precision.INT4, 32) == matrix_bytes(16, 128, Precision.INT4_G32, 64)


def test_group_size_is_part_of_the_name():
    assert Precision.parse("int4g32") is Precision.INT4_G32
    assert Precision.parse("INT2G128") is Precision.INT2_G128
    assert Precision.parse("int4g64") is Precision.INT4  # the default group has today's name
    assert Precision.INT4_G32.group_size == 32 and Precision.INT4.group_size is None
    assert Precision.INT4.group(32) == 32 and Precision.INT4_G128.group(32) == 128
    assert Precision.INT3_G32.base is Precision.INT3 and Precision.INT3_G32.bits == 3
    assert Precision.grouped(4, 128) is Precision.INT4_G128 and Precision.grouped(2, None) is Precision.INT2
    assert Precision.INT4_G32.is_grouped and not Precision.INT4_G32.is_bit_packed
    assert Precision.INT2_G32.is_bit_packed and not Precision.INT8.is_grouped
    with pytest.raises(ValueError, match="known"):
        Precision.parse("int4g48")
    with pytest.raises(ValueError, match="group sizes"):
        Precision.grouped(4, 256)


def test_expert_bytes_shrink_with_precision():
    sizes = [
        expert_bytes(576, 1536, p) for p in (Precision.FP32, Precision.BF16, Precision.INT8, Precision.INT4)
    ]
    assert sizes == sorted(sizes, reverse=True)
    assert expert_bytes(576, 1536, Precision.BF16) == 3 * 576 * 1536 * 2


def test_precision_parse():
    assert Precision.parse(" INT4 ") is Precision.INT4
    with pytest.raises(ValueError, match="known"):
        Precision.parse("int5")


def test_qos_objective_follows_bounds():
    assert QosTarget(max_perplexity_increase=0.5).effective_objective is Objective.SPEED
    assert QosTarget(min_tokens_per_s=5).effective_objective is Objective.QUALITY
    both = QosTarget(min_tokens_per_s=5, max_perplexity=20, objective=Objective.QUALITY)
    assert both.effective_objective is Objective.QUALITY
    assert QosTarget.from_dict(both.to_dict()) == both


def test_qos_ceiling_from_increase():
    assert QosTarget(max_perplexity_increase=0.5).perplexity_ceiling(10.0) == 10.5
    assert QosTarget(max_perplexity=12).perplexity_ceiling(10.0) == 12
    assert QosTarget(min_tokens_per_s=1).perplexity_ceiling(10.0) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"min_tokens_per_s": math.nan},
        {"min_tokens_per_s": math.inf},
        {"min_tokens_per_s": -1},
        {"max_perplexity": 0.5},
        {"max_perplexity": 10, "max_perplexity_increase": 1},
    ],
)
def test_bad_qos_targets_are_rejected(kwargs):
    with pytest.raises(ValueError):
        QosTarget(**kwargs)


@pytest.mark.parametrize("name", ["cpu", "disk", "cuda", "cuda:1", "mps"])
def test_tier_names(name):
    assert validate_tier(name) == name


@pytest.mark.parametrize("name", ["", "gpu", "cuda:x", "DISK", "cpu "])
def test_bad_tier_names(name):
    with pytest.raises(ValueError):
        validate_tier(name)


def test_tier_budget_validation():
    assert TierBudget.from_dict(TierBudget("cpu", 10).to_dict()) == TierBudget("cpu", 10)
    with pytest.raises(ValueError):
        TierBudget("cpu", -1)
