"""The dense part of a plan in the executor: quantized attention and head against a reference, switches
that touch only the dense part, bytes charged to the device tier, private views."""

from __future__ import annotations

import copy

import pytest
import torch
from moeqos.core.dense import DenseElement
from moeqos.core.errors import OverBudget
from moeqos.core.plan import parse_plan
from moeqos.core.precision import Precision, matrix_bytes
from moeqos.executor.quant import native
from moeqos.executor.quant.rtn import dequantize, quantize

from tests.executor.tiny import EXPERTS, LAYERS, fp32_plan, prompt_ids

DENSE = "fp32@cpu,attn=int8,head=int4"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _quantized_reference(reference_model, attn: Precision, head: Precision, group_size: int = 64):
    """transformers' model with its attention and head weights replaced by their RTN round trip (fp32)."""
    model = copy.deepcopy(reference_model)
    with torch.no_grad():
        for layer in model.model.layers:
            for name in PROJECTIONS:
                linear = getattr(layer.self_attn, name)
                linear.weight.copy_(dequantize(quantize(linear.weight, attn, group_size)))
        model.lm_head.weight.copy_(dequantize(quantize(model.lm_head.weight, head, group_size)))
    return model


@pytest.fixture
def torch_integer_ops(monkeypatch):
    """torch's weight-only int8/int4 ops, which round activations only to bf16: the native kernels round
    them to int8 per 32 values (moeqos.executor.quant.native, tested against the same reference in
    tests/executor/test_native_kernels.py), which on this tiny random model moves the logits more than
    int8 weights do, so the comparison below could not tell which weights were used."""
    monkeypatch.setattr(native, "preferred", lambda precision: False)


@pytest.mark.parametrize(("attn", "head"), [("int8", "int4"), ("int4", "int8"), ("bf16", "int4")])
def test_quantized_dense_part_matches_the_quantized_reference(
    torch_integer_ops, runtime, reference_model, attn, head
):
    ids = prompt_ids(20)
    full = runtime.forward_logits(ids)
    runtime.apply_plan(parse_plan(f"fp32@cpu,attn={attn},head={head}", LAYERS, EXPERTS, "cpu"))
    got = runtime.forward_logits(ids)  # [1, S, V]
    expected_model = _quantized_reference(reference_model, Precision(attn), Precision(head))
    with torch.no_grad():
        expected = expected_model(ids).logits  # [1, S, V]
    assert not torch.allclose(got, full, atol=1e-3)  # the dense part really is quantized
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
    error = (got - expected).abs().max() / (full - expected).abs().max()
    assert error < 0.1  # far closer to the quantized reference than to the full-precision model


def test_a_dense_only_switch_leaves_every_expert_untouched(runtime):
    before = {key: runtime.store.module(key) for key, _ in runtime.plan.items()}
    ids = prompt_ids(8)
    reference = runtime.forward_logits(ids)
    switch = runtime.apply_plan(parse_plan(DENSE, LAYERS, EXPERTS, "cpu"))
    assert switch.changed == () and switch.report.experts_changed == 0
    assert set(switch.dense_changed) == {DenseElement.ATTN, DenseElement.HEAD}
    assert all(runtime.store.module(key) is module for key, module in before.items())
    head_only = runtime.apply_plan(parse_plan("fp32@cpu,attn=int8", LAYERS, EXPERTS, "cpu"))
    assert head_only.dense_changed == (DenseElement.HEAD,)  # attn already int8: not re-quantized
    runtime.apply_plan(fp32_plan())
    torch.testing.assert_close(runtime.forward_logits(ids), reference)


def test_a_switch_to_the_same_precision_naming_its_group_requantizes_nothing(runtime):
    """int4g32 is quantized with groups of 32 whatever the plan's group size, so a plan that differs only
    in its group size leaves such a dense element as it is (it was recorded with the plan's)."""
    dense = "fp32@cpu,attn=int4g32,head=int4g32"
    first = runtime.apply_plan(parse_plan(dense, LAYERS, EXPERTS, "cpu", group_size=64))
    assert set(first.dense_changed) == {DenseElement.ATTN, DenseElement.HEAD}
    modules = {slot.name: slot.module for slots in runtime.dense.slots.values() for slot in slots}
    again = runtime.apply_plan(parse_plan(dense, LAYERS, EXPERTS, "cpu", group_size=128))
    assert again.dense_changed == ()
    assert all(slot.module is modules[slot.name] for slots in runtime.dense.slots.values() for slot in slots)
    assert {group for _, group in runtime.dense.served.values()} == {32}


def test_dense_bytes_are_charged_to_the_device_tier_and_shown(make_runtime):
    runtime = make_runtime()
    used = {t.name: t.used_bytes for t in runtime.tier_status()}
    runtime.apply_plan(parse_plan("fp32@cpu,head=int4", LAYERS, EXPERTS, "cpu"))
    head_fp32, head_int4 = (matrix_bytes(256, 64, p) for p in (Precision.FP32, Precision.INT4))
    after = {t.name: t.used_bytes for t in runtime.tier_status()}
    assert after["cpu"] == used["cpu"] - (head_fp32 - head_int4)  # the tiny model's head is untied
    status = {s.element: s for s in runtime.dense_status()}
    assert status[DenseElement.HEAD].precision == Precision.INT4
    assert status[DenseElement.HEAD].bytes == head_int4
    assert status[DenseElement.ATTN].precision == Precision.FP32


def test_a_dense_part_over_budget_is_refused_and_changes_nothing(make_runtime):
    runtime = make_runtime(dense_precision="bf16")
    experts = {t.name: t.used_bytes for t in runtime.tier_status()}["cpu"]
    runtime.set_budget("cpu", experts)  # exactly the experts: a dense part that grows cannot fit
    ids = prompt_ids(8)
    before = runtime.forward_logits(ids)
    with pytest.raises(OverBudget, match="cpu needs"):
        runtime.apply_plan(parse_plan("fp32@cpu,attn=fp32", LAYERS, EXPERTS, "cpu"))
    assert runtime.plan == fp32_plan() and runtime.dense.changed(fp32_plan()) == []
    torch.testing.assert_close(runtime.forward_logits(ids), before)
    shrink = runtime.apply_plan(parse_plan("fp32@cpu,head=int8", LAYERS, EXPERTS, "cpu"))
    assert shrink.dense_changed == (DenseElement.HEAD,)  # a smaller dense part fits the same budget
    assert runtime.plan.dense == ((DenseElement.HEAD, Precision.INT8),)


def test_evaluating_a_dense_plan_computes_it_on_this_thread_only(runtime):
    ids = prompt_ids(8)
    reference = runtime.forward_logits(ids)
    plan = parse_plan(DENSE, LAYERS, EXPERTS, "cpu")
    with runtime.viewing(plan):
        viewed = runtime.forward_logits(ids)
    assert not torch.allclose(viewed, reference, atol=1e-3)
    assert runtime.plan == fp32_plan()
    torch.testing.assert_close(runtime.forward_logits(ids), reference)
    runtime.apply_plan(plan)
    torch.testing.assert_close(runtime.forward_logits(ids), viewed)


def test_the_profile_measures_each_dense_element_per_precision(make_runtime):
    runtime = make_runtime(dense_precision="bf16")
    calibration = runtime.tokenizer.encode(" ".join(["the quick brown fox jumps over the lazy dog"] * 8))
    served = parse_plan("fp32@cpu,head=int8", LAYERS, EXPERTS, "cpu")
    runtime.apply_plan(served)  # profiled with the dense part in bf16, then served again
    profile = runtime.profile(
        calibration, "tiny:train", max_tokens=48, repeats=2, window=24, sensitivity_tokens=0
    )
    costs = {(c.element, c.precision): c for c in profile.dense_costs}
    assert set(costs) == {
        (e, p) for e in DenseElement for p in (Precision.BF16, Precision.INT8, Precision.INT4)
    }
    assert profile.dense_precision == Precision.BF16
    table = runtime.dense.table(served.group_size)
    for (element, precision), cost in costs.items():
        assert cost.bytes == table.bytes[element][precision] and cost.seconds > 0
        assert (cost.log_ppl == 0.0) == (precision == Precision.BF16)
    # int4 moves the perplexity more than int8 (random weights: either way), on both elements
    for element in DenseElement:
        assert abs(costs[element, Precision.INT4].log_ppl) > abs(costs[element, Precision.INT8].log_ppl)
    assert runtime.plan == served and runtime.dense.changed(served) == []  # nothing served changed


def test_a_dense_part_that_cannot_be_built_fails_the_switch_and_changes_nothing(runtime, monkeypatch):
    from moeqos.core.errors import PlanApplyFailed
    from moeqos.executor.checkpoint import CheckpointError

    ids = prompt_ids(8)
    before = runtime.forward_logits(ids)

    def unreadable(key, shape=None):
        raise CheckpointError(f"tensor {key!r} unreadable")

    monkeypatch.setattr(runtime.dense.checkpoint, "read", unreadable)
    with pytest.raises(PlanApplyFailed, match="dense part"):
        runtime.apply_plan(parse_plan("int8@cpu,attn=int4", LAYERS, EXPERTS, "cpu"))
    assert runtime.plan == fp32_plan() and runtime.dense.changed(fp32_plan()) == []
    torch.testing.assert_close(runtime.forward_logits(ids), before)
