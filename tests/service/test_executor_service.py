"""The executor service through the real client: Deploy -> plan applied -> Generate, a budget change
re-planning under a running stream (standing target), rejected plans, and the error map."""

from __future__ import annotations

import logging
import time

import grpc
import pytest
from moeqos.client import DeploySpec, ExecutorClient, PlannerClient, ReplanState, Sampling
from moeqos.core.errors import InvalidArgument, MoeqosError, OutOfRange, OverBudget, PlanApplyFailed
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.service_types import ProfileProgress
from moeqos.planner.dense_model import DenseModel
from moeqos.proto.executor.v1 import executor_pb2, executor_pb2_grpc

from tests.service.service_harness import address


def test_info_describes_model_tiers_and_plan(executor_address, executor):
    with ExecutorClient(executor_address) as client:
        info = client.info()
    runtime = executor.servicer.runtime
    assert info.model == runtime.model
    assert info.plan == runtime.plan
    assert {t.name: t.budget_bytes for t in info.tiers} == runtime.budgets
    assert info.plan_applied_at is not None and info.plan_applied_at.timestamp() == pytest.approx(
        runtime.plan_applied_at, abs=1e-3
    )


def test_deploy_applies_the_plan_and_generate_streams_text(stack, planner_address):
    handle = stack.executor(tier_budgets={"cpu": 1 << 20, "disk": 0})
    target_address = address(handle.port)
    with PlannerClient(planner_address) as planner, ExecutorClient(target_address) as executor:
        target = QosTarget(min_tokens_per_s=0.001)
        [outcome] = planner.deploy([DeploySpec(target_address, target)])
        info = executor.info()
        events = list(executor.generate("the quick brown fox", Sampling(max_tokens=12, seed=3)))
    assert info.plan == outcome.plan
    assert info.standing_target == target
    assert info.planner_address == planner_address
    assert outcome.report.experts_changed == len(
        outcome.plan.changed_experts(Plan.uniform(2, 4, "bf16", "cpu"))
    )
    tokens, final = events[:-1], events[-1]
    assert len(tokens) == 12 and all(e.token_id is not None for e in tokens)
    assert final.stats is not None and final.stats.generated_tokens == 12
    assert final.stats.finish_reason == "length"
    assert final.stats.plan_spec == outcome.plan.to_spec()
    assert "".join(e.text for e in events).strip()


def test_budget_change_replans_under_a_running_stream(stack, planner_address):
    handle = stack.executor(tier_budgets={"cpu": 1 << 20, "disk": 0})
    executor_address = address(handle.port)
    with PlannerClient(planner_address) as planner, ExecutorClient(executor_address) as executor:
        # best quality first (whole experts fit the 1 MiB budget), so the budget cut must change the plan
        planner.deploy([DeploySpec(executor_address, QosTarget(objective=Objective.QUALITY))])
        before = executor.info()
        grouped = 8 * before.model.expert_bytes(Precision.INT4)
        stream = executor.generate("hello world", Sampling(max_tokens=600))
        first = next(stream)
        outcome = executor.set_budget("cpu", grouped + 1000)
        after = _wait_for(lambda: executor.info(), lambda i: i.replan_state is ReplanState.APPLIED)
        rest = list(stream)
    assert first.token_id is not None and outcome.replan_started
    assert after.plan_applied_at > before.plan_applied_at
    # the tier's use: the experts plus the dense part's bytes beyond the dense precision's (it may shrink)
    profile = ExecutorClient(executor_address).get_profile()
    dense_delta = DenseModel.fit(profile).plan_bytes(after.plan.dense).get("cpu", 0)
    experts = sum(after.plan.bytes_per_tier(_bytes(after)).values())
    assert {t.name: t.used_bytes for t in after.tiers}["cpu"] == experts + dense_delta <= grouped + 1000
    # the stream completes normally: every token delivered (the new plan may end it with EOS)
    assert rest[-1].stats is not None and rest[-1].stats.generated_tokens == len(rest)
    assert rest[-1].stats.finish_reason in ("length", "eos")
    assert after.plan != before.plan
    assert rest[-1].stats.plan_spec == after.plan.to_spec()  # the switch happened while the stream ran


def test_replan_retries_while_the_planner_is_down(stack, planner_address):
    handle = stack.executor(tier_budgets={"cpu": 1 << 20, "disk": 0}, replan_backoff=(0.05, 0.2))
    executor_address = address(handle.port)
    with ExecutorClient(executor_address) as executor:
        executor.get_profile()
        idle = executor.info()
        executor.set_target(QosTarget(min_tokens_per_s=0.001), "127.0.0.1:1")
        executor.set_budget("cpu", 1 << 19)
        retrying = _wait_for(executor.info, lambda i: i.replan_state is ReplanState.RETRYING)
        executor.set_target(QosTarget(min_tokens_per_s=0.001), planner_address)
        executor.set_budget("cpu", 1 << 19)
        applied = _wait_for(executor.info, lambda i: i.replan_state is ReplanState.APPLIED)
    assert "127.0.0.1:1" not in applied.planner_address and retrying.replan_state != applied.replan_state
    assert "Unavailable" in retrying.replan_detail and applied.replan_detail == applied.plan.to_spec()
    assert idle.replan_state is ReplanState.IDLE and idle.replan_detail == ""
    # the wire carries the enum itself, not text
    stub = executor_pb2_grpc.ExecutorServiceStub(grpc.insecure_channel(executor_address))
    assert (
        stub.GetInfo(executor_pb2.GetInfoRequest(), timeout=10).replan_state
        == executor_pb2.REPLAN_STATE_APPLIED
    )


def test_rejected_plans_leave_the_running_plan_untouched(executor_address):
    with ExecutorClient(executor_address) as client:
        before = client.info()
        with pytest.raises(OverBudget):
            client.apply_plan(Plan.uniform(2, 4, Precision.FP32, "cpu"))
        with pytest.raises(InvalidArgument):
            client.apply_plan(Plan.uniform(3, 4, Precision.INT4, "cpu"))
        with pytest.raises(InvalidArgument):
            client.apply_plan(Plan.uniform(2, 4, Precision.INT4, "cuda:3"))
        after = client.info()
    assert after.plan == before.plan and after.plan_applied_at == before.plan_applied_at


def test_failed_switch_is_aborted_and_keeps_serving(stack, monkeypatch):
    handle = stack.executor(tier_budgets={"cpu": 1 << 20, "disk": 0})
    runtime = handle.servicer.runtime

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runtime.factory, "build", broken)
    with ExecutorClient(address(handle.port)) as client:
        before = client.info()
        with pytest.raises(PlanApplyFailed, match="disk on fire"):
            client.apply_plan(Plan.uniform(2, 4, Precision.INT8, "cpu"))
        assert client.info().plan == before.plan
        assert client.complete("hello", Sampling(max_tokens=3)).stats.generated_tokens == 3


def test_unexpected_errors_are_internal(stack, monkeypatch):
    handle = stack.executor()

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(handle.servicer.runtime, "tier_status", broken)
    with ExecutorClient(address(handle.port)) as client, pytest.raises(MoeqosError, match=r"INTERNAL.*boom"):
        client.info()


@pytest.mark.parametrize(
    ("prompt", "sampling", "error"),
    [
        ("", Sampling(max_tokens=4), InvalidArgument),
        ("hello", Sampling(max_tokens=0), InvalidArgument),
        ("hello", Sampling(max_tokens=4, temperature=float("nan")), InvalidArgument),
        ("hello", Sampling(max_tokens=4, temperature=-1), InvalidArgument),
        ("hello", Sampling(max_tokens=4, top_p=1.5), InvalidArgument),
        ("hello", Sampling(max_tokens=100_000), OutOfRange),
        ("hello", Sampling(max_tokens=4, temperature=1e-300), OutOfRange),
    ],
)
def test_bad_generation_requests(executor_address, prompt, sampling, error):
    with ExecutorClient(executor_address) as client, pytest.raises(error):
        list(client.generate(prompt, sampling))


def test_evaluate_and_corpus_names(executor_address):
    with ExecutorClient(executor_address) as client:
        result = client.evaluate("ptb:valid", max_tokens=32)
        assert result.perplexity > 1 and result.tokens > 0 and result.corpus == "ptb:valid"
        assert result.decode_tokens == 32 and result.tokens_per_s > 0  # timed past end-of-sequence
        with pytest.raises(InvalidArgument, match="unknown corpus"):
            client.evaluate("text:/etc/passwd", max_tokens=32)
        with pytest.raises(OutOfRange):
            client.evaluate("ptb:valid", max_tokens=10**7)


def test_complete_matches_the_stream_for_a_fixed_seed(executor_address):
    sampling = Sampling(max_tokens=8, temperature=0.8, seed=11)
    with ExecutorClient(executor_address) as client:
        streamed = "".join(e.text for e in client.generate("a mixture of experts", sampling))
        whole = client.complete("a mixture of experts", sampling)
    assert whole.text == streamed and whole.stats.generated_tokens == 8


def _bytes(info):
    return {p: info.model.expert_bytes(p, info.plan.group_size) for p in Precision}


def _wait_for(read, done, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            assert done(value), f"timed out; last value {value}"
            return value
        time.sleep(0.05)


def test_profile_token_bounds_are_out_of_range(executor_address):
    with ExecutorClient(executor_address) as client:
        for tokens in (1, 15, 10**6):
            with pytest.raises(OutOfRange):
                list(client.measure_profile(tokens=tokens))


def test_a_measurement_whose_caller_went_away_stops_at_its_next_progress_report(stack, caplog):
    caplog.set_level(logging.INFO, logger="moeqos.executor.service_measure")
    with ExecutorClient(address(stack.executor(profile_path=None).port)) as client:
        events = client.measure_profile(measure_quality=True)
        assert isinstance(next(events), ProfileProgress)
        events.close()  # cancels the call
        _wait_for(lambda: caplog.text, lambda text: "profile measurement stopped" in text, timeout=30.0)
        assert not client.info().profile_cached  # nothing measured was kept
        assert client.complete("hi", Sampling(max_tokens=2)).stats.generated_tokens == 2
