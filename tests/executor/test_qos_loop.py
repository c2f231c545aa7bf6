"""The closed QoS loop's parts with a fake clock and injected step costs: live rates, recalibration,
the controller's rules (violation, slack, hysteresis, minimum interval), and the loop against an
unreachable planner (the plan in force keeps serving, the re-plan retries with backoff)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from moeqos.api.channel import ConnectOptions
from moeqos.core.dense import DenseCost, DenseElement
from moeqos.core.errors import InfeasibleTarget
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import CallCost, HardwareIdentity, ModelIdentity, Profile, QualityPoint
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.service_types import LiveCalibration, QosState, ReplanState
from moeqos.executor import qos_control, recalibration, service_target
from moeqos.executor.live_stats import LiveStats, WindowRate
from moeqos.executor.qos_control import Decision, LoopSettings, QosController
from moeqos.executor.qos_loop import QosLoop
from moeqos.executor.service_target import StandingTarget, Superseded
from moeqos.planner.latency_model import LatencyModel

FIXED = 0.02
CALL = {Precision.BF16: 0.01, Precision.INT4: 0.004}
"""Seconds per call; with 2 layers of top-2 routing a token makes 4 calls."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def profile() -> Profile:
    model = ModelIdentity("tiny", "fp", 2, 2, 2, 8, 16, 32)
    hardware = HardwareIdentity("cpu", "test", "host", 1, "none")
    calls = tuple(CallCost(p, "cpu", 100, s) for p, s in CALL.items())
    return Profile(model, hardware, "ptb:train", 10, ((1.0, 1.0), (1.0, 1.0)), FIXED, calls)


class Hooks:
    """A moeqos.executor.service_target.ReplanHooks: the test profile, switches recorded."""

    def __init__(self) -> None:
        self.applied: list[Plan] = []
        self.current: list[Callable[[], bool]] = []

    async def cached_profile(self) -> Profile:
        return profile()

    def budgets(self) -> tuple[()]:
        return ()

    async def apply(self, plan: Plan, current: Callable[[], bool] | None = None) -> None:
        if current is not None:
            self.current.append(current)
            if not current():
                raise Superseded("a newer decision came first")
        self.applied.append(plan)


BF16 = Plan.uniform(2, 2, Precision.BF16, "cpu")
INT4 = Plan.uniform(2, 2, Precision.INT4, "cpu")


def true_seconds(plan: Plan, fixed_scale: float, call_scale: float) -> float:
    precision = plan.assignments[0][0].precision
    return fixed_scale * FIXED + call_scale * 4 * CALL[precision]


def feed(stats: LiveStats, clock: FakeClock, seconds: float, tokens: int, stream: int = 0) -> None:
    """`tokens` decode steps of `seconds` each, back to back, on the fake clock."""
    for _ in range(tokens):
        clock.now += seconds
        stats.record(stream, seconds)


# ----- live stats ---------------------------------------------------------------------------------
def test_window_rates_per_stream_and_executor_skip_the_prefill_step() -> None:
    clock = FakeClock()
    stats = LiveStats(lambda: BF16, clock, horizon=10.0)
    sink = stats.stream()
    sink(0, 5.0)  # prefill: not a decode step
    for _ in range(10):
        clock.now += 0.1
        sink(1, 0.1)
    window = stats.window(2.0)
    assert window.tokens == 10 and window.streams == 1
    assert window.stream_tokens_per_s == pytest.approx(10.0)
    assert window.executor_tokens_per_s == pytest.approx(5.0)
    clock.now += 20.0
    stats.record(1, 0.1)  # the horizon drops old steps
    assert len(stats.steps(100.0)) == 1


def test_window_counts_only_steps_under_the_plan_asked_for() -> None:
    clock, plan = FakeClock(), [BF16]
    stats = LiveStats(lambda: plan[0], clock)
    feed(stats, clock, 0.1, 5)
    plan[0] = INT4
    feed(stats, clock, 0.05, 4)
    assert stats.window(10.0, INT4).tokens == 4
    assert stats.window(10.0, INT4).stream_tokens_per_s == pytest.approx(20.0)
    assert stats.window(10.0).tokens == 9


def requests(
    stats: LiveStats, clock: FakeClock, count: int, prefill: float, step: float, tokens: int
) -> None:
    """`count` requests back to back: each waits and prefills `prefill` seconds for its first token,
    then decodes `tokens - 1` steps of `step` seconds."""
    for _ in range(count):
        sink = stats.stream()
        clock.now += prefill
        sink(0, prefill)
        for index in range(1, tokens):
            clock.now += step
            sink(index, step)


def test_the_clients_rate_counts_each_first_token_from_its_requests_arrival() -> None:
    """Decode at 10 tok/s; each request's first token comes 0.3 s after it arrived: its client sees 10
    tokens in 1.2 s, and the recalibration still fits decode steps only."""
    clock = FakeClock()
    stats = LiveStats(lambda: BF16, clock, horizon=10.0)
    requests(stats, clock, 2, prefill=0.3, step=0.1, tokens=10)
    window = stats.window(5.0)
    assert (window.tokens, window.streams) == (18, 2)
    assert window.stream_tokens_per_s == pytest.approx(10.0)
    assert window.client_tokens_per_s == pytest.approx(20 / 2.4)
    assert window.overhead == pytest.approx(1.2)
    assert len(stats.steps(5.0)) == 18 and all(not s.first for s in stats.steps(5.0))
    assert stats.step_rate(BF16, 0, 0.0, 2) == pytest.approx(10.0)


def test_streams_are_pooled_by_the_seconds_they_ran_in_the_window() -> None:
    """A request that only began at the window's end (prefill and two tokens) weighs as little as it
    lasted, not as much as the whole one before it."""
    clock = FakeClock()
    stats = LiveStats(lambda: BF16, clock, horizon=10.0)
    requests(stats, clock, 1, prefill=0.1, step=0.1, tokens=21)  # 2.1 s at 10 tok/s seen
    requests(stats, clock, 1, prefill=0.5, step=0.1, tokens=3)  # 0.7 s, a slow prefill
    window = stats.window(10.0)
    assert window.client_tokens_per_s == pytest.approx(24 / 2.8)


# ----- recalibration ------------------------------------------------------------------------------
def test_fit_recovers_both_scales_once_two_plans_were_served() -> None:
    clock, plan = FakeClock(), [BF16]
    stats = LiveStats(lambda: plan[0], clock)
    feed(stats, clock, true_seconds(BF16, 2.0, 1.5), 40)
    plan[0] = INT4
    feed(stats, clock, true_seconds(INT4, 2.0, 1.5), 40)
    fitted = recalibration.fit(profile(), stats.steps(60.0), prior_steps=1.0)
    assert fitted.fixed_scale == pytest.approx(2.0, rel=0.05)
    assert fitted.call_scale == pytest.approx(1.5, rel=0.05)
    assert fitted.steps == 80
    assert recalibration.predict_seconds(fitted, profile(), INT4) == pytest.approx(
        true_seconds(INT4, 2.0, 1.5), rel=0.02
    )


def test_fit_with_one_plan_matches_its_step_time_and_prior_alone_is_the_profile() -> None:
    clock = FakeClock()
    stats = LiveStats(lambda: BF16, clock)
    assert recalibration.fit(profile(), []) == LiveCalibration()
    feed(stats, clock, true_seconds(BF16, 1.6, 1.6), 200)
    fitted = recalibration.fit(profile(), stats.steps(100.0))
    assert recalibration.predict_seconds(fitted, profile(), BF16) == pytest.approx(
        true_seconds(BF16, 1.6, 1.6), rel=0.1
    )
    calibrated = recalibration.apply(fitted, profile())
    assert calibrated.fixed_seconds == pytest.approx(FIXED * fitted.fixed_scale)
    assert calibrated.call_costs[0].seconds == pytest.approx(CALL[Precision.BF16] * fitted.call_scale)


def slow_profile(fixed: float, call_factor: float) -> Profile:
    """The test profile with fixed_seconds `fixed` and every call cost times `call_factor`."""
    measured = profile()
    calls = tuple(dataclasses.replace(c, seconds=c.seconds * call_factor) for c in measured.call_costs)
    return dataclasses.replace(measured, fixed_seconds=fixed, call_costs=calls)


@pytest.mark.parametrize(
    ("measured", "observed_tps"),
    [
        (slow_profile(1.5, 1.0), 5.0),  # the default model's case: predicted 0.65 tok/s, 5 measured
        (slow_profile(0.02, 1.0), 80.0),  # the calls dominate, live 5x faster than measured
        (slow_profile(0.02, 1.0), 4.0),  # a neighbour: 4x slower than measured
    ],
)
def test_fit_predicts_the_rate_just_measured_however_far_off_the_profile_was(
    measured: Profile, observed_tps: float
) -> None:
    """Regression: on the default model a profile measured on a busier machine predicted ~0.6 tok/s,
    decode ran at ~5, and the fit still predicted ~1.3: its prior pulled towards the profile in
    seconds, which drove the smaller scale below zero, and each scale was clamped alone."""
    clock = FakeClock()
    stats = LiveStats(lambda: BF16, clock)
    feed(stats, clock, 1.0 / observed_tps, 60)
    fitted = recalibration.fit(measured, stats.steps(60.0))
    predicted_tps = 1.0 / recalibration.predict_seconds(fitted, measured, BF16)
    assert predicted_tps == pytest.approx(observed_tps, rel=0.05)
    assert fitted.fixed_scale == pytest.approx(fitted.call_scale)  # one plan: the profile's split


def test_fit_recovers_both_scales_of_a_profile_far_off() -> None:
    measured = slow_profile(1.5, 1.0)  # live: fixed 0.1x, calls 0.3x
    clock, plan = FakeClock(), [BF16]
    stats = LiveStats(lambda: plan[0], clock)
    live = {p: 0.1 * 1.5 + 0.3 * 4 * CALL[p.assignments[0][0].precision] for p in (BF16, INT4)}
    feed(stats, clock, live[BF16], 40)
    plan[0] = INT4
    feed(stats, clock, live[INT4], 40)
    fitted = recalibration.fit(measured, stats.steps(60.0))
    for p, seconds in live.items():
        assert recalibration.predict_seconds(fitted, measured, p) == pytest.approx(seconds, rel=0.05)


ATTN_SECONDS = {Precision.BF16: 0.008, Precision.INT8: 0.003}
"""The dense attention's measured seconds per token in the dense precision and in int8."""


def dense_profile() -> Profile:
    costs = tuple(DenseCost(DenseElement.ATTN, p, 100, s, 0.0) for p, s in ATTN_SECONDS.items())
    return dataclasses.replace(profile(), dense_costs=costs)


def test_a_plans_dense_part_is_priced_in_the_fixed_regressor_as_the_planner_prices_it() -> None:
    """Regression: the fixed regressor was the profile's fixed seconds whatever the plan's dense part,
    so steps of a plan with int8 attention (faster outside the experts) pulled the fixed scale down,
    and the planner, which adds the dense saving itself, then counted the saving twice."""
    int8_attention = BF16.with_dense(((DenseElement.ATTN, Precision.INT8),))
    saving = ATTN_SECONDS[Precision.INT8] - ATTN_SECONDS[Precision.BF16]
    fixed_scale, call_scale = 2.0, 1.5

    def live(plan: Plan) -> float:
        return true_seconds(plan, fixed_scale, call_scale) + fixed_scale * saving * (plan.dense != ())

    clock, plan = FakeClock(), [BF16]
    stats = LiveStats(lambda: plan[0], clock)
    for served in (BF16, int8_attention, INT4):
        plan[0] = served
        feed(stats, clock, live(served), 40)
    measured = dense_profile()
    fitted = recalibration.fit(measured, stats.steps(60.0), prior_steps=1.0)
    assert (fitted.fixed_scale, fitted.call_scale) == pytest.approx((fixed_scale, call_scale), rel=0.02)
    dense_int4 = INT4.with_dense(int8_attention.dense)
    for p in (BF16, int8_attention, dense_int4):
        assert recalibration.predict_seconds(fitted, measured, p) == pytest.approx(live(p), rel=0.02)
    planner = LatencyModel.fit(recalibration.apply(fitted, measured))  # what the loop re-plans with
    assert planner.fixed_seconds == pytest.approx(fixed_scale * FIXED, rel=0.02)
    dense_saving = planner.predict_seconds(int8_attention) - planner.predict_seconds(BF16)
    assert dense_saving == pytest.approx(live(int8_attention) - live(BF16), rel=0.02)


def test_fit_walks_each_plans_experts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `setdefault(key, regressors(...))` walked every expert of the plan for every step
    (47 ms a tick at 330 steps of the default model's 240 experts, every 0.5 s on the event loop:
    the closed loop's quiet decode ran ~9% under the open loop's)."""
    clock, plan = FakeClock(), [BF16]
    stats = LiveStats(lambda: plan[0], clock)
    feed(stats, clock, 0.05, 30)
    plan[0] = INT4
    feed(stats, clock, 0.03, 30)
    walked: list[Plan] = []
    real = recalibration.regressors

    def counted(profile: Profile, plan: Plan) -> tuple[float, float]:
        walked.append(plan)
        return real(profile, plan)

    monkeypatch.setattr(recalibration, "regressors", counted)
    recalibration.fit(profile(), stats.steps(60.0))
    assert walked == [BF16, INT4]


def test_outlier_steps_are_clipped() -> None:
    clock = FakeClock()
    stats = LiveStats(lambda: BF16, clock)
    feed(stats, clock, true_seconds(BF16, 1.0, 1.0), 50)
    feed(stats, clock, 30.0, 1)  # a stall must not price every plan 10x slower
    fitted = recalibration.fit(profile(), stats.steps(1000.0))
    assert recalibration.predict_seconds(fitted, profile(), BF16) < 1.2 * true_seconds(BF16, 1.0, 1.0)


# ----- the controller -----------------------------------------------------------------------------
def rate(tokens_per_s: float | None, tokens: int = 30) -> WindowRate:
    return WindowRate(3.0, tokens, 1, tokens_per_s, tokens_per_s or 0.0)


def test_controller_rules() -> None:
    settings = LoopSettings(tolerance=0.05, slack=0.25, min_interval_s=4.0, slack_interval_s=8.0)
    c = QosController(settings)
    assert c.decide(0.0, None, rate(1.0), busy=False).state is QosState.NO_FLOOR
    assert c.decide(0.0, 10.0, rate(5.0), busy=True).state is QosState.REPLANNING
    short = WindowRate(0.5, 3, 1, 5.0, 6.0)  # 3 tokens in 0.5 s: too few to judge
    assert not c.decide(0.0, 10.0, short, busy=False).replan
    idle = WindowRate(3.0, 0, 0, None, 0.0)
    assert c.decide(0.0, 10.0, idle, busy=False).state is QosState.MET
    inside = c.decide(0.0, 10.0, rate(9.6), busy=False)  # within tolerance and slack: hysteresis band
    assert (inside.state, inside.replan) == (QosState.MET, False)
    violated = c.decide(0.0, 10.0, rate(9.0), busy=False)
    assert (violated.state, violated.replan, violated.for_slack) == (QosState.VIOLATED, True, False)
    assert "floor violated" in violated.reason
    c.replanned(0.0)
    again = c.decide(3.0, 10.0, rate(9.0), busy=False)
    assert (again.state, again.replan) == (QosState.VIOLATED, False)  # minimum interval
    assert c.decide(4.0, 10.0, rate(9.0), busy=False).replan
    assert not c.decide(7.0, 10.0, rate(13.0), busy=False).replan  # slack waits its longer interval
    slack = c.decide(8.0, 10.0, rate(13.0), busy=False)
    assert (slack.state, slack.replan, slack.for_slack) == (QosState.MET, True, True)


def test_the_floor_is_judged_at_the_rate_the_clients_see() -> None:
    """Regression: decode steps at 10.5 tok/s met a floor of 10 while the clients, whose requests wait
    for their prefills, counted 9 (measured: plans the loop judged as held ran at 40-47 tok/s in the
    clients' 1 s windows against a floor of 46.4)."""
    c = QosController(LoopSettings(tolerance=0.05))
    window = WindowRate(3.0, 30, 1, 10.5, 10.0, covered=3.0)
    assert c.decide(0.0, 10.0, window, busy=False).state is QosState.MET
    decision = c.decide(0.0, 10.0, window, busy=False, overhead=10.5 / 9.0)
    assert (decision.state, decision.replan) == (QosState.VIOLATED, True)
    assert "9.00 < 10" in decision.reason
    held = WindowRate(9.0, 90, 1, 10.3, 10.3, covered=8.9)  # inside the tolerance, short once sustained
    short = c.decide(0.0, 10.0, rate(10.3), busy=False, sustained=held, overhead=1.04)
    assert short.replan and "short of the floor: 9.90" in short.reason


def test_a_rate_held_short_of_the_floor_inside_the_tolerance_is_a_violation_once_sustained() -> None:
    c = QosController(LoopSettings(tolerance=0.05, sustained_s=9.0))
    inside = rate(9.8)  # 2% under the floor: inside the tolerance
    assert c.decide(0.0, 10.0, inside, busy=False).state is QosState.MET
    brief = WindowRate(9.0, 40, 1, 9.8, 4.4, covered=5.0)  # the plan in force for 5 s only
    assert c.decide(0.0, 10.0, inside, busy=False, sustained=brief).state is QosState.MET
    held = WindowRate(9.0, 88, 1, 9.8, 9.8, covered=8.9)
    short = c.decide(0.0, 10.0, inside, busy=False, sustained=held)
    assert (short.state, short.replan) == (QosState.VIOLATED, True) and "short of the floor" in short.reason
    met = WindowRate(9.0, 90, 1, 10.1, 10.1, covered=8.9)
    assert c.decide(0.0, 10.0, inside, busy=False, sustained=met).state is QosState.MET


def test_slack_replans_that_change_nothing_back_off_and_a_change_resets() -> None:
    c = QosController(LoopSettings(slack_interval_s=8.0, max_slack_interval_s=20.0))
    c.settled(changed=False, for_slack=True, now=0.0)
    assert c.slack_interval == 16.0
    c.settled(changed=False, for_slack=True, now=0.0)
    assert c.slack_interval == 20.0
    c.settled(changed=True, for_slack=False, now=0.0)
    assert c.slack_interval == 8.0


def test_a_plan_that_took_over_is_judged_on_its_own_steps_before_the_next_replan() -> None:
    """The minimum interval counts from the switch when a re-plan's apply took longer than it."""
    c = QosController(LoopSettings(min_interval_s=4.0, slack_interval_s=8.0))
    c.replanned(0.0)
    c.settled(changed=True, for_slack=False, now=6.0)  # the switch took 6 s
    assert not c.decide(7.0, 10.0, rate(5.0), busy=False).replan  # 1 s of the new plan's steps
    assert c.decide(10.0, 10.0, rate(5.0), busy=False).replan
    c.replanned(20.0)
    c.settled(changed=False, for_slack=False, now=21.0)  # nothing changed: the interval stays the start's
    assert c.decide(24.0, 10.0, rate(5.0), busy=False).replan
    c.settled(changed=True, for_slack=False, now=1.0)  # a late report never moves the clock back
    assert c.last_replan == 20.0


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        LoopSettings(headroom=0.3, slack=0.25)
    with pytest.raises(ValueError):
        LoopSettings(window_s=0)


# ----- the loop -----------------------------------------------------------------------------------
def test_loop_against_a_planner_that_is_down_keeps_the_plan_and_retries() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        hooks = Hooks()
        target = StandingTarget("127.0.0.1:1", ConnectOptions(), hooks, backoff=(0.01, 0.05))
        target.set(QosTarget(min_tokens_per_s=20.0), "")
        stats = LiveStats(lambda: BF16, clock)
        loop = QosLoop(LoopSettings(), stats, target, lambda: BF16)
        feed(stats, clock, true_seconds(BF16, 2.0, 2.0), 60)  # 100 ms a token: 10 tok/s < 20
        first = loop.tick(profile())
        assert first.replan and first.state is QosState.REPLANNING
        assert loop.calibration.steps > 0  # recalibrated from the live steps
        for _ in range(20):
            await asyncio.sleep(0.02)
            clock.now += 1.0
            assert not loop.tick(profile()).replan  # one re-plan in flight, retrying, never restarted
        assert target.state is ReplanState.RETRYING
        assert hooks.applied == []  # the plan in force keeps serving
        status = loop.status(profile())
        assert status.state is QosState.REPLANNING and status.floor_tokens_per_s == 20.0
        target.cancel()

    asyncio.run(scenario())


def fake_planner(
    monkeypatch: pytest.MonkeyPatch,
    answer: Callable[[QosTarget, Profile, tuple[PlacementRule, ...]], Plan],
) -> None:
    """Re-plans ask `answer` instead of a planner (moeqos.client.planner.AsyncPlannerClient's `plan`;
    what it raises, the planner raised)."""

    class Planner:
        def __init__(self, *args: object) -> None:
            pass

        async def __aenter__(self) -> Planner:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def plan(self, target, profile, budgets, pins):  # type: ignore[no-untyped-def]
            return SimpleNamespace(plan=answer(target, profile, pins))

    monkeypatch.setattr(service_target, "AsyncPlannerClient", Planner)


def test_a_loop_replan_keeps_the_pins_asks_from_the_calibration_and_applies_only_while_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[QosTarget, Profile, tuple[PlacementRule, ...]]] = []

    def answer(target: QosTarget, profile: Profile, pins: tuple[PlacementRule, ...]) -> Plan:
        asked.append((target, profile, pins))
        return INT4

    fake_planner(monkeypatch, answer)

    async def scenario() -> None:
        clock, hooks = FakeClock(), Hooks()
        target = StandingTarget("127.0.0.1:1", ConnectOptions(), hooks)
        pins = (PlacementRule("L0.E*", Precision.BF16, "cpu"),)
        target.set(QosTarget(min_tokens_per_s=20.0), "", pins)
        stats = LiveStats(lambda: BF16, clock)
        loop = QosLoop(LoopSettings(), stats, target, lambda: BF16)
        target.planning_target, target.planning_profile = loop.planning_target, loop.calibrated
        feed(stats, clock, true_seconds(BF16, 2.0, 2.0), 60)  # 10 tok/s < 20
        generation = target.generation
        assert loop.tick(profile()).replan and target.generation == generation + 1
        await target.wait()
        [(goal, planned_from, kept)] = asked
        assert kept == pins and goal.min_tokens_per_s == pytest.approx(20.0 * 1.12)
        assert planned_from.fixed_seconds == pytest.approx(FIXED * loop.calibration.fixed_scale)
        assert hooks.applied == [INT4] and target.state is ReplanState.APPLIED
        [current] = hooks.current
        target.set(QosTarget(min_tokens_per_s=5.0), "", pins)  # a newer SetTarget
        assert not current()  # a re-plan of the older target could no longer apply

    asyncio.run(scenario())


def test_open_loop_measures_but_never_replans_nor_recalibrates() -> None:
    clock = FakeClock()
    target = StandingTarget("127.0.0.1:1", ConnectOptions(), Hooks())
    target.set(QosTarget(min_tokens_per_s=20.0), "")
    stats = LiveStats(lambda: BF16, clock)
    loop = QosLoop(LoopSettings(enabled=False), stats, target, lambda: BF16)
    feed(stats, clock, 0.1, 60)
    decision = loop.tick(profile())
    assert decision.state is QosState.VIOLATED and target.state is ReplanState.IDLE
    assert loop.calibrated(profile()) == profile()
    status = loop.status(profile())
    assert status.measured_tokens_per_s == pytest.approx(10.0) and not status.loop
    assert status.predicted_tokens_per_s == pytest.approx(1 / true_seconds(BF16, 1.0, 1.0))


def test_planning_target_adds_headroom_only_with_the_loop_on() -> None:
    target = StandingTarget("", ConnectOptions(), Hooks())
    on = QosLoop(LoopSettings(headroom=0.1), LiveStats(lambda: BF16), target, lambda: BF16)
    off = QosLoop(LoopSettings(enabled=False), LiveStats(lambda: BF16), target, lambda: BF16)
    floor = QosTarget(min_tokens_per_s=10.0, max_perplexity=20.0)
    assert on.planning_target(floor) == QosTarget(min_tokens_per_s=11.0, max_perplexity=20.0)
    assert off.planning_target(floor) == floor


def failing_loop(goal: QosTarget) -> tuple[QosLoop, StandingTarget, FakeClock, LiveStats]:
    clock = FakeClock()
    target = StandingTarget("127.0.0.1:1", ConnectOptions(), Hooks())
    target.set(goal, "")
    stats = LiveStats(lambda: BF16, clock)
    loop = QosLoop(LoopSettings(fallback_ppl_increase=0.15), stats, target, lambda: BF16)
    target.replan = lambda: False  # type: ignore[method-assign]  # (no event loop here: decide only)
    return loop, target, clock, stats


def violate_after(loop: QosLoop, target: StandingTarget, clock: FakeClock, stats, state, measured) -> None:
    """The last re-plan ended in `state`; a violated window later the loop decides to re-plan."""
    target.state = state
    clock.now += 10.0
    feed(stats, clock, 0.1, 60)
    assert loop.tick(measured).state is QosState.VIOLATED


def with_reference(perplexity: float) -> Profile:
    return dataclasses.replace(
        profile(), quality_points=(QualityPoint("bf16@cpu", perplexity, "ptb:valid", 64),)
    )


def test_failed_replans_step_down_to_the_floor_then_the_fastest_plan_within_the_ceiling() -> None:
    goal = QosTarget(min_tokens_per_s=20.0, max_perplexity=30.0)
    loop, target, clock, stats = failing_loop(goal)
    violate_after(
        loop, target, clock, stats, ReplanState.FAILED, profile()
    )  # e.g. no plan at floor + headroom
    assert loop.planning_target(goal) == goal  # the floor itself, the ceiling kept
    violate_after(loop, target, clock, stats, ReplanState.FAILED, profile())  # not even at the floor
    assert loop.planning_target(goal) == QosTarget(max_perplexity=30.0, objective=Objective.SPEED)
    violate_after(loop, target, clock, stats, ReplanState.FAILED, profile())  # it stays there
    assert loop.planning_target(goal) == QosTarget(max_perplexity=30.0, objective=Objective.SPEED)
    violate_after(loop, target, clock, stats, ReplanState.APPLIED, profile())  # one applied: back up
    assert loop.planning_target(goal) == QosTarget(min_tokens_per_s=20.0 * 1.12, max_perplexity=30.0)


def test_the_boost_and_the_overhead_raise_the_floor_of_stages_0_and_1() -> None:
    """Regression: stage 1 asked for the floor alone after a boosted stage 0 found nothing, so it
    chose a plan slower than one that had already fallen short, and one more stage went by."""
    goal = QosTarget(min_tokens_per_s=10.0, max_perplexity=50.0)
    settings = LoopSettings(headroom=0.1)
    stage0, _ = qos_control.planning_target(goal, settings, 0, None, boost=1.2, overhead=1.1)
    assert stage0.min_tokens_per_s == pytest.approx(10.0 * 1.1 * 1.2 * 1.1)
    stage1, _ = qos_control.planning_target(goal, settings, 1, None, boost=1.2, overhead=1.1)
    assert stage1.min_tokens_per_s == pytest.approx(10.0 * 1.1 * 1.2) and stage1.max_perplexity == 50.0
    stage2, _ = qos_control.planning_target(goal, settings, 2, None, boost=1.2, overhead=1.1)
    assert stage2 == QosTarget(max_perplexity=50.0, objective=Objective.SPEED)


def test_without_a_ceiling_every_stage_is_capped_over_the_reference_never_the_fastest_plan() -> None:
    goal = QosTarget(min_tokens_per_s=20.0)
    measured = with_reference(90.0)
    loop, target, clock, stats = failing_loop(goal)
    violate_after(loop, target, clock, stats, ReplanState.APPLIED, measured)
    quality = Objective.QUALITY  # kept: a ceiling alone would make the planner optimise speed
    stage0 = QosTarget(min_tokens_per_s=20.0 * 1.12, max_perplexity=90.0 * 1.15, objective=quality)
    assert loop.planning_target(goal) == stage0
    violate_after(loop, target, clock, stats, ReplanState.FAILED, measured)
    stage1 = QosTarget(min_tokens_per_s=20.0, max_perplexity=90.0 * 1.15, objective=quality)
    assert loop.planning_target(goal) == stage1
    violate_after(loop, target, clock, stats, ReplanState.FAILED, measured)
    asked = loop.planning_target(goal)
    assert asked.objective is Objective.SPEED and asked.min_tokens_per_s is None
    assert asked.max_perplexity == pytest.approx(90.0 * 1.15)  # int2's 25,000 is out of reach


def test_without_a_reference_there_is_no_cap_to_give_and_the_floor_itself_is_kept() -> None:
    goal = QosTarget(min_tokens_per_s=20.0)
    loop, target, clock, stats = failing_loop(goal)
    for _ in range(3):
        violate_after(loop, target, clock, stats, ReplanState.FAILED, profile())
        assert loop.planning_target(goal) == goal


def test_a_slack_replan_after_a_failure_asks_with_headroom() -> None:
    goal = QosTarget(min_tokens_per_s=5.0)
    loop, target, clock, stats = failing_loop(goal)
    target.state = ReplanState.FAILED
    clock.now += 10.0
    feed(stats, clock, 0.1, 60)  # 10 tok/s: slack over 5
    assert loop.tick(profile()).for_slack
    assert loop.planning_target(goal) == QosTarget(min_tokens_per_s=5.0 * 1.12)


def test_a_replan_that_applied_and_fell_short_makes_the_next_ask_for_more_until_threads_change() -> None:
    """The boost: after a re-plan for a violation applied a plan that measures under what it asked
    for, the next one asks for that ratio more (capped); a thread change drops it."""
    goal = QosTarget(min_tokens_per_s=10.0)
    clock = FakeClock()
    target = StandingTarget("127.0.0.1:1", ConnectOptions(), Hooks())
    target.set(goal, "")
    serving = [BF16]
    knob = SimpleNamespace(wanted=2, most=2)
    stats = LiveStats(lambda: serving[0], clock, threads=lambda: knob.wanted)
    loop = QosLoop(
        LoopSettings(max_boost=1.5, headroom=0.08), stats, target, lambda: serving[0], lambda: knob
    )  # type: ignore[arg-type, return-value]
    target.replan = lambda: True  # type: ignore[method-assign]  # (no event loop here: decide only)

    def violated_at(tokens_per_s: float) -> None:
        clock.now += 10.0
        feed(stats, clock, 1 / tokens_per_s, 60)
        assert loop.tick(profile()).replan

    violated_at(8.0)
    assert loop.planning_target(goal) == QosTarget(min_tokens_per_s=10.8)  # the first ask: headroom only
    serving[0], target.state = INT4, ReplanState.APPLIED  # it applied INT4 ...
    assert not loop.tick(profile()).replan  # (seen at the next tick: nothing of INT4 measured yet)
    violated_at(9.0)  # ... which measures 9 where 10.8 was asked: 1.2x short
    assert loop.boost == pytest.approx(1.2)
    assert loop.planning_target(goal).min_tokens_per_s == pytest.approx(10.8 * 1.2)
    serving[0] = BF16
    assert not loop.tick(profile()).replan
    violated_at(5.0)  # its plan: 2.6x short, capped
    assert loop.boost == pytest.approx(1.5)
    knob.wanted = 1  # the machine changed: what was learned no longer holds
    loop.tick(profile())
    assert loop.boost == 1.0 and loop.planning_target(goal) == QosTarget(min_tokens_per_s=10.8)


def stepping_loop(
    goal: QosTarget, settings: LoopSettings, serving: Plan = BF16
) -> tuple[QosLoop, StandingTarget, FakeClock, list[Plan]]:
    """A loop whose re-plans start (nothing runs them: the test says how each ended); the list's one
    item is the plan in force, `serving` at first."""
    clock = FakeClock()
    target = StandingTarget("127.0.0.1:1", ConnectOptions(), Hooks())
    target.set(goal, "")
    served = [serving]
    stats = LiveStats(lambda: served[0], clock)
    loop = QosLoop(settings, stats, target, lambda: served[0])
    target.replan = lambda: True  # type: ignore[method-assign]  # (no event loop here: decide only)
    return loop, target, clock, served


def test_a_slack_replan_that_lands_short_of_its_ask_teaches_the_boost() -> None:
    """Regression: only re-plans for a violation recorded what they asked, so a slack move to a quality
    plan that ran at the floor's edge taught nothing, and the re-plan after it asked for the same
    headroom that had just fallen short."""
    goal = QosTarget(min_tokens_per_s=10.0)
    loop, target, clock, serving = stepping_loop(goal, LoopSettings(headroom=0.08), INT4)

    def replan_at(tokens_per_s: float) -> Decision:
        clock.now += 10.0
        feed(loop.stats, clock, 1 / tokens_per_s, 60)
        decision = loop.tick(profile())
        assert decision.replan
        return decision

    assert replan_at(14.0).for_slack  # 14 > 10 + 25%: room for quality, asking 10.8
    serving[0], target.state = BF16, ReplanState.APPLIED  # the quality plan took over ...
    assert not loop.tick(profile()).replan
    assert not replan_at(9.0).for_slack  # ... and runs at 9: a violation, 1.2x short of the ask
    assert loop.boost == pytest.approx(1.2)
    assert loop.planning_target(goal).min_tokens_per_s == pytest.approx(10.8 * 1.2)


def test_a_fallback_stage_plan_that_falls_short_moves_the_next_replan_on_a_stage() -> None:
    """Regression (contention bench, beside a one-core neighbour at one thread): stage 0 found no plan,
    stage 1 applied a plan predicted at the floor that ran 5-8% under it, and the next violation asked
    at stage 0 again, round and round for 40 s, never for the fastest plan within the ceiling."""
    goal = QosTarget(min_tokens_per_s=20.0)
    measured = with_reference(90.0)
    loop, target, clock, serving = stepping_loop(goal, LoopSettings(fallback_ppl_increase=0.15))

    def replan_at(tokens_per_s: float) -> Decision:
        clock.now += 10.0
        feed(loop.stats, clock, 1 / tokens_per_s, 60)
        decision = loop.tick(measured)
        assert decision.replan and not decision.for_slack
        return decision

    replan_at(15.0)
    assert loop.planning_target(goal).min_tokens_per_s == pytest.approx(20.0 * 1.12)
    target.state = ReplanState.FAILED  # stage 0 found no plan
    replan_at(15.0)
    assert loop.planning_target(goal) == QosTarget(
        min_tokens_per_s=20.0, max_perplexity=90.0 * 1.15, objective=Objective.QUALITY
    )  # stage 1
    serving[0], target.state = INT4, ReplanState.APPLIED  # it applied INT4 ...
    assert not loop.tick(measured).replan  # (settled at the next tick)
    replan_at(18.5)  # ... which runs short of the floor
    asked = loop.planning_target(goal)
    assert asked.objective is Objective.SPEED and asked.max_perplexity == pytest.approx(90.0 * 1.15)
    serving[0] = BF16  # the fastest plan took over ...
    assert not loop.tick(measured).replan
    replan_at(18.0)  # ... and is short too: the last stage is kept
    assert loop.planning_target(goal).objective is Objective.SPEED
    clock.now += 10.0
    feed(loop.stats, clock, 1 / 30.0, 90)  # the neighbour left: slack, asked for with headroom
    assert loop.tick(measured).for_slack
    assert loop.planning_target(goal).min_tokens_per_s == pytest.approx(20.0 * 1.12)
    serving[0] = INT4  # the slack re-plan's plan: a violation under it starts at stage 0 again
    assert not loop.tick(measured).replan
    replan_at(18.0)  # (short of the 22.4 the slack re-plan asked for: that much more is asked now)
    assert loop.planning_target(goal).min_tokens_per_s == pytest.approx(22.4 * 22.4 / 18.0)


def test_a_replan_that_found_no_plan_lets_the_next_stage_go_at_the_next_tick() -> None:
    goal = QosTarget(min_tokens_per_s=20.0)
    measured = with_reference(90.0)
    loop, target, clock, _ = stepping_loop(goal, LoopSettings(fallback_ppl_increase=0.15))
    clock.now += 10.0
    feed(loop.stats, clock, 1 / 15.0, 60)
    assert loop.tick(measured).replan  # stage 0 ...
    assert loop.planning_target(goal).min_tokens_per_s == pytest.approx(20.0 * 1.12)
    target.state = ReplanState.FAILED  # ... found no plan
    feed(loop.stats, clock, 1 / 15.0, 8)  # half a second later
    assert loop.tick(measured).replan  # stage 1 at once, not after min_interval_s
    assert loop.planning_target(goal) == QosTarget(
        min_tokens_per_s=20.0, max_perplexity=90.0 * 1.15, objective=Objective.QUALITY
    )
    target.state = ReplanState.FAILED
    feed(loop.stats, clock, 1 / 15.0, 8)
    assert loop.tick(measured).replan  # stage 2 at once too
    target.state = ReplanState.FAILED  # the last stage found nothing either: now the interval holds
    feed(loop.stats, clock, 1 / 15.0, 8)
    decision = loop.tick(measured)
    assert decision.state is QosState.VIOLATED and not decision.replan


def test_a_slow_model_is_judged_over_a_window_long_enough_for_min_tokens_and_still_calibrated() -> None:
    clock = FakeClock()
    target = StandingTarget("", ConnectOptions(), Hooks())
    target.set(QosTarget(min_tokens_per_s=1.0), "")
    stats = LiveStats(lambda: BF16, clock)
    loop = QosLoop(
        LoopSettings(window_s=3.0, min_tokens=8, calibration_window_s=6.0), stats, target, lambda: BF16
    )
    feed(stats, clock, 2.0, 8)  # 0.5 tok/s: 3 tokens in 6 s, 8 in 16 s
    decision = loop.tick(profile())
    assert decision.state is QosState.VIOLATED  # judged over 8 s (8 tokens at the 1 tok/s floor)
    assert loop.window().seconds == pytest.approx(8.0)
    assert loop.calibration.steps == 8  # fitted to the last 8 steps, older than the 6 s window


def test_a_replan_asks_for_the_decode_rate_the_clients_floor_needs() -> None:
    """The planner predicts decode steps: with requests that spend a sixth of their time before their
    first token, a floor as the clients see it needs that much more decode rate, plus the headroom;
    the status puts the prediction on the clients' scale."""
    goal = QosTarget(min_tokens_per_s=11.5)
    loop, _, clock, _ = stepping_loop(goal, LoopSettings(headroom=0.1, window_s=6.0))
    clock.now += 10.0
    requests(loop.stats, clock, 3, prefill=0.3, step=1 / 12, tokens=19)  # 5.4 s: decode 12 tok/s
    clients = 57 / 5.4
    decision = loop.tick(profile())
    assert decision.replan and decision.reason.startswith("floor violated: 10.56 < 11.5")
    assert loop.overhead == pytest.approx(12 / clients)
    assert loop.planning_target(goal).min_tokens_per_s == pytest.approx(11.5 * 12 / clients * 1.1)
    status = loop.status(profile())
    assert status.measured_tokens_per_s == pytest.approx(clients)
    assert status.predicted_tokens_per_s == pytest.approx(1 / true_seconds(BF16, 1.0, 1.0) / (12 / clients))
    clock.now += 10.0
    requests(loop.stats, clock, 3, prefill=3.0, step=1 / 12, tokens=19)  # mostly prefill: capped
    loop.tick(profile())
    assert loop.overhead == LoopSettings().max_overhead


def wired_loop(served: list[Plan], floor: float) -> tuple[FakeClock, Hooks, StandingTarget, QosLoop]:
    """A loop holding `floor` over a standing target wired to it as the server wires them; the plan in
    force is `served[0]`."""
    clock, hooks = FakeClock(), Hooks()
    target = StandingTarget("127.0.0.1:1", ConnectOptions(), hooks)
    target.set(QosTarget(min_tokens_per_s=floor), "")
    loop = QosLoop(LoopSettings(), LiveStats(lambda: served[0], clock), target, lambda: served[0])
    target.planning_target, target.planning_fallbacks = loop.planning_target, loop.planning_fallbacks
    target.planning_refusal = loop.planning_refusal
    return clock, hooks, target, loop


def test_a_violations_replan_asks_for_the_later_stages_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: each stage the planner found no plan for cost a tick and a solve before the next
    was asked for (1-1.5 s each beside the neighbour, while the clients' windows read 4-14 tokens);
    now one re-plan asks for them in turn. A slack re-plan asks for its one target only."""
    asked: list[QosTarget] = []

    def answer(target: QosTarget, profile: Profile, pins: tuple[PlacementRule, ...]) -> Plan:
        asked.append(target)
        if target.min_tokens_per_s is not None:  # no plan meets any floor
            raise InfeasibleTarget(f"no plan meets {target.describe()}")
        return INT4

    fake_planner(monkeypatch, answer)
    measured = with_reference(90.0)

    async def scenario() -> None:
        served = [BF16]
        clock, hooks, target, loop = wired_loop(served, 20.0)
        feed(loop.stats, clock, 0.1, 60)  # 10 tok/s < 20
        assert loop.tick(measured).replan
        await target.wait()
        assert [a.min_tokens_per_s for a in asked] == [pytest.approx(22.4), pytest.approx(20.0), None]
        assert asked[-1].objective is Objective.SPEED and asked[-1].max_perplexity == pytest.approx(103.5)
        assert hooks.applied == [INT4] and target.rung == 2
        served[0] = INT4  # the last stage's plan took over ...
        assert not loop.tick(measured).replan
        asked.clear()
        clock.now += 10.0
        feed(loop.stats, clock, 0.1, 60)  # ... and falls short: the last stage again, alone
        assert loop.tick(measured).replan
        await target.wait()
        assert [a.objective for a in asked] == [Objective.SPEED]
        asked.clear()
        clock.now += 60.0
        feed(loop.stats, clock, 1 / 40.0, 240)  # 40 tok/s: slack, for the quality plan
        decision = loop.tick(measured)
        assert decision.replan and decision.for_slack
        await target.wait()
        assert [a.min_tokens_per_s for a in asked] == [pytest.approx(22.4)]  # no fallback stages
        assert asked[0].effective_objective is Objective.QUALITY  # for quality, under the ceiling
        assert target.state is ReplanState.FAILED

    asyncio.run(scenario())


def test_a_violations_replan_never_applies_a_plan_predicted_slower_than_the_one_in_force(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (demo, 2026-12-05): the plan in force sat beyond the last stage's ceiling, so the
    fastest plan within it was a slower one, and the loop switched to it while short of the floor.
    A plan predicted slower (under the live calibration) is turned down like no plan found; a re-plan
    for slack may still pick a slower, more accurate plan."""
    asked: list[QosTarget] = []
    floors_met = [False]

    def answer(target: QosTarget, profile: Profile, pins: tuple[PlacementRule, ...]) -> Plan:
        asked.append(target)
        if target.min_tokens_per_s is not None and not floors_met[0]:  # no plan meets any floor ...
            raise InfeasibleTarget(f"no plan meets {target.describe()}")
        return BF16  # ... and the most accurate plan is the one within the ceiling

    fake_planner(monkeypatch, answer)
    measured = with_reference(90.0)

    async def scenario() -> None:
        served = [INT4]
        clock, hooks, target, loop = wired_loop(served, 40.0)
        feed(loop.stats, clock, true_seconds(INT4, 1.0, 1.0), 200)  # int4 as profiled: 27.8 tok/s < 40
        assert loop.tick(measured).replan
        await target.wait()
        assert len(asked) == 3 and asked[-1].objective is Objective.SPEED  # every stage was asked
        assert hooks.applied == [] and target.state is ReplanState.FAILED
        assert "slower than the plan in force" in target.detail
        assert loop.planning_refusal(INT4) is None  # as fast as itself
        floors_met[0] = True  # the planner now answers every floor with the accurate plan
        clock.now += 60.0
        feed(loop.stats, clock, true_seconds(INT4, 1.0, 1.0) / 3, 600)  # 83 tok/s: slack
        decision = loop.tick(measured)
        assert decision.replan and decision.for_slack
        await target.wait()
        assert hooks.applied == [BF16]  # for slack, the slower and more accurate plan applies

    asyncio.run(scenario())
