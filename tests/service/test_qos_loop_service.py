"""The closed QoS loop with real servers: a standing floor deployed through the planner holds a
high-quality plan; an injected slowdown of the expert calls (memory-bandwidth contention: each call
takes longer in proportion to the expert's bytes) makes the executor measure the violation,
recalibrate its profile and re-plan to a faster plan on its own."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest
from moeqos.client import DeploySpec, ExecutorClient, PlannerClient, Sampling
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile
from moeqos.core.qos import QosTarget
from moeqos.core.service_types import QosState
from moeqos.executor import service_measure
from moeqos.executor.loader import moe_blocks
from moeqos.executor.qos_control import LoopSettings
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.variant_warmup import WarmupSettings

from tests.service.service_harness import address

FAST_LOOP = LoopSettings(
    window_s=1.0,
    min_interval_s=1.0,
    slack_interval_s=600.0,
    tick_s=0.2,
    calibration_window_s=2.0,
    min_tokens=6,
)
"""Judged every 0.2 s over 1 s windows; slack re-plans effectively off, so only a violation re-plans."""


class SlowExperts:
    """An ExpertRunner that sleeps `seconds_per_byte` x the expert's bytes before each call."""

    def __init__(self, inner, runtime: ExecutorRuntime, seconds_per_byte: float) -> None:
        self.inner, self.runtime, self.seconds_per_byte = inner, runtime, seconds_per_byte

    def run(self, layer, expert, x):
        self._slow_down(layer, [expert])
        return self.inner.run(layer, expert, x)

    def run_token(self, layer, experts, x, weights):
        self._slow_down(layer, experts)
        return self.inner.run_token(layer, experts, x, weights)

    def device_experts(self, layer, experts):
        return None  # every call through run_token, which sleeps

    def _slow_down(self, layer, experts):
        plan = self.runtime.plan
        nbytes = sum(self.runtime.model.expert_bytes(plan[layer, e].precision) for e in experts)
        time.sleep(self.seconds_per_byte * nbytes)


def expert_bytes(runtime: ExecutorRuntime, plan: Plan) -> int:
    return sum(runtime.model.expert_bytes(a.precision) for _, a in plan.items())


def consistent_profile(shared: Path, base_rate: float, runtime: ExecutorRuntime) -> Profile:
    """The shared profile with costs that agree with this machine now: half of a bf16 step fixed, half in
    its 4 expert calls, every other precision's call in proportion to its bytes (memory bound). The tiny
    model's measured costs are mostly noise (a few ms, measured once on a loaded machine)."""
    profile = Profile.from_json(shared.read_text())
    step = 1.0 / base_rate
    bf16 = runtime.model.expert_bytes(Precision.BF16)
    calls = tuple(
        dataclasses.replace(c, seconds=step / 8 * runtime.model.expert_bytes(c.precision) / bf16)
        for c in profile.call_costs
    )
    return dataclasses.replace(profile, fixed_seconds=step / 2, call_costs=calls)


def decode_rate(client: ExecutorClient, tokens: int = 24) -> float:
    return client.complete("the quick brown fox", Sampling(max_tokens=tokens, seed=1)).stats.tokens_per_s


@pytest.mark.timeout(240)
def test_an_injected_slowdown_makes_the_executor_replan_to_a_faster_plan(stack, planner_address, tmp_path):
    profile_path = tmp_path / "profile.json"
    handle = stack.executor(
        tier_budgets={"cpu": 600_000, "disk": 0},
        planner_address=planner_address,
        qos=FAST_LOOP,
        initial_plan="bf16@cpu",
        profile_path=profile_path,
    )
    runtime = handle.servicer.runtime
    target_address = address(handle.port)
    with PlannerClient(planner_address) as planner, ExecutorClient(target_address) as client:
        base = decode_rate(client)
        service_measure.save(profile_path, consistent_profile(stack.profile_path, base, runtime))
        client.get_profile()
        floor = 0.5 * base
        [outcome] = planner.deploy([DeploySpec(target_address, QosTarget(min_tokens_per_s=floor))])
        quality = outcome.plan
        # The 4 calls of a token now add two unslowed steps in bf16: the quality plan falls far
        # below the floor, while the narrowest precisions stay above it.
        per_byte = 1.0 / base / 2 / runtime.model.expert_bytes(quality[0, 0].precision)
        for block in moe_blocks(runtime.lm, runtime.adapter):
            block.runner = SlowExperts(block.runner, runtime, per_byte)
        stop = threading.Event()

        def keep_decoding() -> None:
            with ExecutorClient(target_address) as streamer:
                while not stop.is_set():
                    streamer.complete("the quick brown fox", Sampling(max_tokens=32, seed=2))

        thread = threading.Thread(target=keep_decoding, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 120
            # After a failed re-plan the loop first asks for the floor itself (a smaller step, e.g. a
            # dense element only), then for the fastest plan within a ceiling: wait for the experts.
            first_replan_basis = None
            while time.monotonic() < deadline and expert_bytes(runtime, runtime.plan) >= expert_bytes(
                runtime, quality
            ):
                if first_replan_basis is None and runtime.plan != quality:
                    first_replan_basis = handle.servicer.qos.planned_with
                time.sleep(0.2)
            if first_replan_basis is None:
                first_replan_basis = handle.servicer.qos.planned_with
            info = client.info()
        finally:
            stop.set()
            thread.join(30)
    assert runtime.plan != quality, "the executor never re-planned under the slowdown"
    assert expert_bytes(runtime, runtime.plan) < expert_bytes(runtime, quality)
    assert info.qos is not None and info.qos.loop and info.qos.floor_tokens_per_s == pytest.approx(floor)
    assert info.qos.state in (QosState.MET, QosState.VIOLATED, QosState.REPLANNING)
    assert "live: " in info.qos.calibration
    # The fit the first re-plan was priced with saw the expert calls slow down: the slowdown triples
    # a step, and one plan's steps split the scale evenly; 1.6-3.1 measured, on a loaded machine the
    # lowest. (Later windows mix plans whose real costs need not follow the test profile's
    # bytes-proportional call costs: on the tiny model an int2 call is not 8x cheaper than a bf16
    # one, so the split of a later fit is not asserted; CI once saw fixed x7.9, calls x0.05 there.)
    assert first_replan_basis.call_scale > 1.25


def test_profile_at_start_measures_before_serving(stack, tmp_path):
    handle = stack.executor(
        tier_budgets={"cpu": 600_000, "disk": 0}, profile_path=tmp_path / "p.json", profile_at_start=True
    )
    with ExecutorClient(address(handle.port)) as client:
        assert client.info().profile_cached  # measured before health turned SERVING
    assert (tmp_path / "p.json").is_file()


def test_a_saved_profile_is_read_before_serving(stack):
    handle = stack.executor(tier_budgets={"cpu": 600_000, "disk": 0})
    with ExecutorClient(address(handle.port)) as client:
        info = client.info()
    assert info.profile_cached and info.qos is not None and info.qos.predicted_tokens_per_s is not None


def test_status_shows_the_floor_prediction_measurement_and_verdict(stack, capsys):
    from moeqos.cli.main import main

    handle = stack.executor(tier_budgets={"cpu": 600_000, "disk": 0}, qos=FAST_LOOP)
    target = address(handle.port)
    with ExecutorClient(target) as client:
        client.set_target(QosTarget(min_tokens_per_s=0.001))
        client.complete("the quick brown fox", Sampling(max_tokens=16, seed=1))
        time.sleep(0.5)  # two ticks of the loop
    assert main(["status", "--executor", target]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "floor 0.001 tok/s" in x]
    assert line and line[0].split(": ", 2)[1].startswith("met"), line
    assert "predicted " in line[0] and "measured " in line[0] and "loop on" in line[0]
    assert main(["status", "--executor", target, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["qos"]["state"] == "met" and row["qos"]["floor_tokens_per_s"] == 0.001


def test_the_demo_judges_a_floor_on_the_executors_own_window_after_waiting(stack):
    """The demo's met/missed for a floor: the executor's measured window once the loop had its chance,
    early when it meets the floor `confirm` polls in a row, else after `hold_s`."""
    from moeqos.demo.hold import HoldSettings, hold_floor

    handle = stack.executor(tier_budgets={"cpu": 600_000, "disk": 0}, qos=FAST_LOOP, warmup=WarmupSettings())
    target = address(handle.port)
    settings = HoldSettings(hold_s=8.0, poll_s=0.3, confirm=2)
    with ExecutorClient(target) as client:
        client.set_target(QosTarget(min_tokens_per_s=0.001))
        met = hold_floor(target, 0.001, settings, "the quick brown fox")
        client.set_target(QosTarget(min_tokens_per_s=1e6))  # no planner: the loop cannot act
        missed = hold_floor(target, 1e6, HoldSettings(hold_s=2.0, poll_s=0.3), "the quick brown fox")
    assert met is not None and met.met and met.loop and met.waited_s < settings.hold_s
    assert met.measured_tokens_per_s is not None and met.measured_tokens_per_s > 0.001
    assert missed is not None and not missed.met and missed.waited_s >= 2.0
    assert missed.state == "violated" and missed.plan_changes == 0 and missed.switch_seconds == ()
    assert met.variants_ahead.startswith(("building", "done"))  # the shared profile's, built ahead


def test_after_the_demos_warm_up_the_profile_the_planner_reads_is_calibrated_live(stack):
    """The demo reads its targets off a frontier planned from GetProfile; its warm-up generation gives
    the executor's loop the live steps that calibrate that profile to the machine as it runs now."""
    from moeqos.demo.scenario import DemoSettings, warm_up

    handle = stack.executor(tier_budgets={"cpu": 600_000, "disk": 0}, qos=FAST_LOOP)
    target = address(handle.port)
    with ExecutorClient(target) as client:
        measured = client.get_profile()
        assert client.info().qos.calibration == "as measured"
        assert warm_up(target, DemoSettings(warmup_tokens=24)) > 0
        status = client.info().qos
        deadline = time.monotonic() + 5.0
        while not status.calibration.startswith("live:") and time.monotonic() < deadline:
            time.sleep(0.1)
            status = client.info().qos
        calibrated = client.get_profile()
    assert status.calibration.startswith("live:"), status.calibration
    assert calibrated.fixed_seconds != measured.fixed_seconds  # what the planner plans from now
