"""The Plan type: construction, text and JSON forms, diffs and byte accounting."""

import json

import pytest
from moeqos.core.plan import Assignment, Plan, parse_plan
from moeqos.core.precision import Precision, expert_bytes


def test_text_form_resolves_rules_first_match_wins():
    plan = parse_plan("int4@cpu,L0.E1=int8,L0.E*=bf16@disk,L1-2.E0+3=int2", 3, 4, "cpu")
    assert plan[0, 1] == Assignment(Precision.INT8, "cpu")
    assert plan[0, 0] == Assignment(Precision.BF16, "disk")
    assert plan[1, 0] == plan[2, 3] == Assignment(Precision.INT2, "cpu")
    assert plan[1, 1] == Assignment(Precision.INT4, "cpu")


def test_default_tier_fills_missing_tier():
    plan = parse_plan("bf16", 2, 2, "cuda:0")
    assert plan.tiers() == {"cuda:0"}


@pytest.mark.parametrize(
    "spec",
    [
        "int4@cpu",
        "bf16@cpu,L0.E0-2=int8@disk,L1.E3=int2@cpu",
        "fp32@cpu,L1.E*=int3@disk,L0.E1=fp16@cpu",
        "int4@cpu,head=int4",
        "int4@cpu,HEAD=int8,L0.E1=bf16,attn=int4",
    ],
)
def test_spec_and_json_round_trip(spec):
    plan = parse_plan(spec, 2, 4, "cpu")
    assert parse_plan(plan.to_spec(), 2, 4, "cpu") == plan
    assert Plan.from_json(plan.to_json()) == plan
    assert parse_plan(plan.to_json(), 2, 4, "cpu") == plan


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "int5",
        "int4@tape",
        "L0.E1=int4",
        "int4,L0.X1=int8",
        "int4,L0.E1",
        "int4,Lx.E1=int8",
        "int4,head=int9",
        "int4,head=int4@cpu",
        "int4,attn=int8,attn=int4",
        "head=int4",
    ],
)
def test_malformed_text_is_rejected_with_value_error(spec):
    with pytest.raises(ValueError):
        parse_plan(spec, 2, 4, "cpu")


def test_shape_mismatch_is_rejected():
    plan = Plan.uniform(2, 4, "int4", "cpu")
    with pytest.raises(ValueError, match="2 layers x 4 experts"):
        plan.check_shape(3, 4)
    with pytest.raises(ValueError):
        parse_plan(plan.to_json(), 3, 4, "cpu")


def test_ragged_plan_is_rejected():
    a = Assignment(Precision.INT4, "cpu")
    with pytest.raises(ValueError, match="layer 1"):
        Plan(((a, a), (a,)))


def test_changed_experts_lists_exactly_the_differences():
    before = Plan.uniform(3, 4, "int4", "cpu")
    after = parse_plan("int4@cpu,L1.E2=int8,L2.E0=int4@disk", 3, 4, "cpu")
    assert after.changed_experts(before) == [(1, 2), (2, 0)]
    assert before.changed_experts(before) == []


def test_group_size_change_touches_only_grouped_experts():
    before = parse_plan("int4@cpu,L0.E0=bf16", 1, 3, "cpu")
    after = parse_plan("int4@cpu,L0.E0=bf16", 1, 3, "cpu", group_size=128)
    assert after.changed_experts(before) == [(0, 1), (0, 2)]


def test_bytes_per_tier_sums_expert_sizes():
    plan = parse_plan("int4@cpu,L0.E0-1=bf16@disk", 2, 4, "cpu")
    sizes = {p: expert_bytes(64, 128, p) for p in Precision}
    assert plan.bytes_per_tier(sizes) == {"cpu": 6 * sizes[Precision.INT4], "disk": 2 * sizes[Precision.BF16]}


def test_dict_form_is_plain_json():
    plan = parse_plan("int8@cpu,L1.E1=int3@disk", 2, 2, "cpu")
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["assignments"][1][1] == "int3@disk"
    assert Plan.from_dict(data) == plan


def test_dense_part_is_canonical_and_left_out_when_empty():
    plan = parse_plan("int4@cpu,head=int4,attn=int8", 2, 4, "cpu")
    assert plan.to_spec() == "int4@cpu,attn=int8,head=int4"
    assert plan.to_dict()["dense"] == {"attn": "int8", "head": "int4"}
    assert plan != plan.with_dense(()) and plan.with_dense(()) == Plan.uniform(2, 4, "int4", "cpu")
    assert "dense" not in Plan.uniform(2, 4, "int4", "cpu").to_dict()  # today's JSON, unchanged
    assert plan.changed_experts(plan.with_dense(())) == []
    assert plan.describe().endswith("attn=int8 head=int4")


def test_with_layers_sets_those_layers_precision_keeping_tiers_group_and_dense() -> None:
    spec = parse_plan("int8@cpu,L1.E*=int8@disk,head=int8", 3, 2, "cpu")
    base = Plan(spec.assignments, 32, spec.dense)
    mixed = base.with_layers((1, 2), Precision.INT4)
    assert [a.precision for a in mixed.assignments[0]] == [Precision.INT8] * 2
    assert [(a.precision, a.tier) for a in mixed.assignments[1]] == [(Precision.INT4, "disk")] * 2
    assert [(a.precision, a.tier) for a in mixed.assignments[2]] == [(Precision.INT4, "cpu")] * 2
    assert (mixed.group_size, mixed.dense) == (32, base.dense)
