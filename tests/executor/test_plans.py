"""Applying plans at run time: validation, exact rebuilds, rollback on failure, budgets, caches."""

from __future__ import annotations

import pytest
import torch
from moeqos.core.errors import InvalidArgument, OverBudget, PlanApplyFailed
from moeqos.core.plan import Plan, parse_plan
from moeqos.core.precision import Precision, expert_bytes
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.runtime import ExecutorRuntime

from tests.executor.tiny import EXPERTS, LAYERS, fp32_plan, prompt_ids

MIXED = "fp32@cpu,L0.E1=int4,L1.E2=int8,L1.E3=bf16@disk"


def _modules(runtime) -> dict:
    return {key: runtime.store.module(key) for key, _ in runtime.plan.items()}


def test_switch_rebuilds_exactly_the_changed_experts(runtime) -> None:
    before = _modules(runtime)
    switch = runtime.apply_plan(parse_plan(MIXED, LAYERS, EXPERTS, "cpu"))
    after = _modules(runtime)
    changed = {(0, 1), (1, 2), (1, 3)}
    assert switch.report.experts_changed == 3 and set(switch.changed) == changed
    assert switch.previous == fp32_plan() and switch.current == runtime.plan
    for key in before:
        if key in changed:
            assert after[key] is not before[key]
        else:
            assert after[key] is before[key]
    assert after[(1, 3)] is None  # disk tier: not resident
    assert after[(0, 1)].precision == Precision.INT4


def test_switch_changes_outputs_and_switching_back_restores_them(runtime) -> None:
    ids = prompt_ids(16)
    reference = runtime.forward_logits(ids)
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, "int2", "cpu"))
    assert not torch.allclose(runtime.forward_logits(ids), reference, atol=1e-3)
    runtime.apply_plan(fp32_plan())
    torch.testing.assert_close(runtime.forward_logits(ids), reference)


def test_alternating_turns_two_plans_in_and_out_without_building(runtime, monkeypatch) -> None:
    """`alternating` builds the trial plan's own experts and dense matrices once; each turn then serves
    one plan or the other exactly (the same logits as applying it), builds nothing, and the plan before
    is back afterwards, its own modules untouched."""
    ids = prompt_ids(16)
    trial = parse_plan("fp32@cpu,L0.E*=int4,L1.E2=int8", LAYERS, EXPERTS, "cpu").with_dense(
        (("attn", Precision.INT8),)
    )
    runtime.apply_plan(trial)
    trial_logits = runtime.forward_logits(ids)
    runtime.apply_plan(fp32_plan())
    served_logits = runtime.forward_logits(ids)
    served_modules = _modules(runtime)
    builds: list[object] = []
    build = runtime.factory.build
    monkeypatch.setattr(runtime.factory, "build", lambda *args: builds.append(args) or build(*args))
    with runtime.alternating(trial) as turn:
        assert len(builds) == EXPERTS + 1
        for to_trial, expected in [(True, trial_logits), (False, served_logits), (True, trial_logits)]:
            turn(to_trial)
            assert runtime.plan == (trial if to_trial else fp32_plan())
            torch.testing.assert_close(runtime.forward_logits(ids), expected)
        assert len(builds) == EXPERTS + 1
    assert runtime.plan == fp32_plan() and _modules(runtime) == served_modules
    torch.testing.assert_close(runtime.forward_logits(ids), served_logits)


def test_alternating_refuses_what_it_cannot_turn_with_nothing_built(make_runtime, monkeypatch) -> None:
    """A trial that changes a disk-tier expert is InvalidArgument; one whose own experts do not fit
    beside the served plan's is OverBudget; either way nothing is built and the plan keeps serving."""
    one_expert = expert_bytes(64, 128, Precision.FP32)
    runtime = make_runtime(tier_budgets={"cpu": (LAYERS * EXPERTS + 1) * one_expert, "disk": one_expert})
    builds: list[object] = []
    build = runtime.factory.build
    monkeypatch.setattr(runtime.factory, "build", lambda *args: builds.append(args) or build(*args))
    with (
        pytest.raises(InvalidArgument),
        runtime.alternating(parse_plan("fp32@cpu,L0.E0=fp32@disk", LAYERS, EXPERTS, "cpu")),
    ):
        pass
    with (
        pytest.raises(OverBudget, match="beside"),
        runtime.alternating(
            parse_plan("fp32@cpu,L0.E0-2=bf16", LAYERS, EXPERTS, "cpu")  # 1.5 fp32 experts' bytes
        ),
    ):
        pass
    assert runtime.plan == fp32_plan() and builds == []
    with runtime.alternating(parse_plan("fp32@cpu,L0.E0-1=bf16", LAYERS, EXPERTS, "cpu")) as turn:
        turn(True)  # two bf16 experts beside the fp32 plan fit
    assert runtime.plan == fp32_plan()


@pytest.mark.parametrize(
    "plan",
    [
        Plan.uniform(LAYERS + 1, EXPERTS, "int4", "cpu"),
        Plan.uniform(LAYERS, EXPERTS, "int4", "cuda:0"),
        Plan.uniform(LAYERS, EXPERTS, "int4", "cpu", group_size=48),
    ],
    ids=["wrong-shape", "unknown-tier", "group-size"],
)
def test_malformed_plan_is_rejected_and_old_plan_keeps_serving(runtime, plan) -> None:
    ids = prompt_ids(8)
    before = runtime.forward_logits(ids)
    with pytest.raises(InvalidArgument):
        runtime.apply_plan(plan)
    assert runtime.plan == fp32_plan()
    torch.testing.assert_close(runtime.forward_logits(ids), before)


def test_over_budget_plan_is_rejected(make_runtime) -> None:
    one_expert = expert_bytes(64, 128, Precision.FP32)
    runtime = make_runtime(tier_budgets={"cpu": LAYERS * EXPERTS * one_expert, "disk": one_expert})
    ids = prompt_ids(8)
    before = runtime.forward_logits(ids)
    with pytest.raises(OverBudget, match="disk"):
        runtime.apply_plan(parse_plan("fp32@cpu,L0.E0-1=fp32@disk", LAYERS, EXPERTS, "cpu"))
    runtime.apply_plan(parse_plan("fp32@cpu,L0.E0=fp32@disk", LAYERS, EXPERTS, "cpu"))
    assert runtime.set_budget("cpu", one_expert) is False
    with pytest.raises(OverBudget, match="cpu"):
        runtime.apply_plan(fp32_plan())
    torch.testing.assert_close(runtime.forward_logits(ids), before)


def test_failure_while_building_one_expert_rolls_back(runtime, monkeypatch) -> None:
    ids = prompt_ids(8)
    before, modules = runtime.forward_logits(ids), _modules(runtime)
    build = runtime.factory.build

    def failing(variant, device):
        if variant[:2] == (1, 2):
            raise RuntimeError("injected failure")
        return build(variant, device)

    monkeypatch.setattr(runtime.factory, "build", failing)
    with pytest.raises(PlanApplyFailed, match=r"L1\.E2"):
        runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, "int8", "cpu"))
    assert runtime.plan == fp32_plan()
    assert _modules(runtime) == modules
    torch.testing.assert_close(runtime.forward_logits(ids), before)


def test_tier_status_reports_budgets_and_use(runtime) -> None:
    runtime.apply_plan(parse_plan(MIXED, LAYERS, EXPERTS, "cpu"))
    status = {t.name: t for t in runtime.tier_status()}
    assert set(status) == {"cpu", "disk"}
    fp32, int4, int8, bf16 = (expert_bytes(64, 128, Precision(p)) for p in ("fp32", "int4", "int8", "bf16"))
    assert status["cpu"].used_bytes == 5 * fp32 + int4 + int8
    assert status["disk"].used_bytes == bf16
    assert all(t.budget_bytes > 0 for t in status.values())


def test_switching_back_and_forth_does_not_quantize_again(make_runtime) -> None:
    runtime = make_runtime(variant_cache_dir=None)  # no persisted variants: only the memory cache helps
    int4 = Plan.uniform(LAYERS, EXPERTS, "int4", "cpu")
    start = runtime.factory.quantized
    runtime.apply_plan(int4)
    assert runtime.factory.quantized == start + LAYERS * EXPERTS
    runtime.apply_plan(fp32_plan())
    runtime.apply_plan(int4)
    runtime.apply_plan(fp32_plan())
    assert runtime.factory.quantized == start + LAYERS * EXPERTS
    assert len(runtime.factory.memory) == LAYERS * EXPERTS


def test_memory_cache_is_bounded_by_bytes(make_runtime) -> None:
    one = expert_bytes(64, 128, Precision.INT8)
    runtime = make_runtime(variant_cache_dir=None, memory_cache_bytes=3 * one)
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, "int8", "cpu"))
    runtime.apply_plan(fp32_plan())
    assert len(runtime.factory.memory) == 3 and runtime.factory.memory.used_bytes == 3 * one


def test_variant_cache_dir_survives_a_restart(runtime, tmp_path) -> None:
    int4 = Plan.uniform(LAYERS, EXPERTS, "int4", "cpu")
    runtime.apply_plan(int4)
    ids = prompt_ids(8)
    expected = runtime.forward_logits(ids)
    again = ExecutorRuntime.load(ExecutorConfig(**{**runtime.config.__dict__}), int4)
    assert again.factory.quantized == 0
    torch.testing.assert_close(again.forward_logits(ids), expected)


def test_load_without_a_plan_serves_bf16_on_the_device_when_it_fits(tiny_dir) -> None:
    runtime = ExecutorRuntime.load(ExecutorConfig(model_dir=tiny_dir))
    assert runtime.plan == Plan.uniform(LAYERS, EXPERTS, "bf16", "cpu")
    budget = LAYERS * EXPERTS * expert_bytes(64, 128, Precision.INT4)
    small = ExecutorRuntime.load(ExecutorConfig(model_dir=tiny_dir, tier_budgets={"cpu": budget}))
    assert small.plan == Plan.uniform(LAYERS, EXPERTS, "int4", "cpu")
