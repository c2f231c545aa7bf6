"""The closed loop that keeps a standing throughput floor: measure, recalibrate, judge, re-plan.

Every `tick_s` the loop
0. sets torch's thread count from the cores other processes keep busy, and judges the last change
   by its measured effect (moeqos.executor.thread_knob); steps at another count are not this
   machine's state any more, so steps 1 and 2 only count steps at the count in force;
1. re-fits the live calibration to the decode steps of the last `calibration_window_s` (kept as it was
   when nothing was decoded: an idle executor learns nothing new);
2. judges the rate of the streams as their clients see it over the last `window_s`: their decode rate,
   counting only steps under the plan in force (a window straddling a plan switch would judge the new
   plan by the old one's steps), over the overhead of the clients' rate (first tokens' waits and
   prefills), measured over all steps the stats keep;
3. when the controller says so, starts a re-plan through the StandingTarget, which asks the planner
   with the calibrated profile (GetProfile serves the same), applies the plan, and retries with
   backoff while the planner is down; the plan in force keeps serving throughout.
   A re-plan that comes after one that applied and still left the rate under what it asked for asks
   for more (the boost: the ratio it fell short by, compounded, capped at `max_boost`): the
   calibration scales the whole step, so the planner's error on what a plan change gains (measured
   at one thread: it credited switching int8 experts to int4 with about twice what the switch
   gained) is corrected from outcomes. Slack re-plans, which trade speed back for quality, teach it
   too (measured beside a neighbour at one thread: a slack move from an int4 plan at 46 tok/s to the
   quality plan, asked for 32, ran at 25-33 on a floor of 28.8 for 14 s until the next re-plan). The
   boost is kept while resources stay as they are and dropped when the thread count or the target
   changes. The fallback stages (moeqos.executor.qos_control) go one further when a re-plan found
   no plan, and also when the plan a fallback stage applied is still in force and falls short:
   stage 1 asks for the floor itself from the same calibration whose error put the stage-0 plans out
   of reach, and its plan can land as short (measured beside a one-core neighbour at one thread:
   stage 0 found nothing, stage 1 applied plans predicted at the floor that ran 5-8% under it, and the
   loop went back to stage 0 and round again for 40 s, never asking for the fastest plan). A
   violation's re-plan asks for the later stages itself, at once, while the planner finds no plan
   (`planning_fallbacks`): nothing changed that needs measuring between them.
Each decision that changes something, or says why nothing changes, is logged once.

With the loop off (`LoopSettings.enabled = False`) steps are still measured and reported, but nothing
is recalibrated or re-planned: the open-loop behaviour, kept for comparison.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from moeqos.core.plan import Plan
from moeqos.core.profile import Profile
from moeqos.core.qos import QosTarget
from moeqos.core.service_types import LiveCalibration, QosState, QosStatus, ReplanState
from moeqos.executor import qos_control, recalibration
from moeqos.executor.cpu_share import CpuShare
from moeqos.executor.live_stats import LiveStats, StepRecord, WindowRate
from moeqos.executor.qos_control import Decision, LoopSettings, QosController
from moeqos.executor.service_target import StandingTarget
from moeqos.executor.thread_knob import ThreadKnob, ThreadPolicy

log = logging.getLogger(__name__)

BUSY = (ReplanState.REPLANNING, ReplanState.RETRYING)


class QosLoop:
    """Measures, recalibrates and keeps the standing floor of one executor (see the module docstring)."""

    def __init__(
        self,
        settings: LoopSettings,
        stats: LiveStats,
        target: StandingTarget,
        plan: Callable[[], Plan],
        knob: Callable[[], ThreadKnob | None] = lambda: None,
        cpu: CpuShare | None = None,
    ) -> None:
        """`plan()` is the plan in force; `knob()` the thread knob (None: no thread actuator, e.g.
        before the model is loaded); `cpu` measures other processes' CPU use (None: not measured)."""
        self.settings = settings
        self.stats = stats
        self.target = target
        self.controller = QosController(settings)
        self.cpu = cpu
        self.thread_policy = ThreadPolicy(settings.threads, cpu.cores if cpu is not None else 1)
        self.thread_note = ""
        """The last thread change or its measured effect, with the reason (for GetInfo)."""
        self._knob = knob
        self.calibration = LiveCalibration()
        """The live calibration (as measured until the loop has fitted one; always so when off)."""
        self.planned_with = LiveCalibration()
        """The calibration of the profile the plan in force was chosen from (the prediction's basis)."""
        self._plan = plan
        self._last = Decision(QosState.NO_FLOOR, False, "not started")
        self._fallback = 0
        """The fallback stage of the next re-plan for a violation (qos_control.planning_target): one
        more after each failed re-plan and after a fallback stage's plan fell short, back to 0 after
        one applied a plan that held or a re-plan for slack."""
        self._fallback_plan: str | None = None
        """The spec of the plan the last re-plan at a fallback stage (1 or 2) applied."""
        self._rungs: tuple[int, ...] = (0,)
        """The stage of each target the re-plan in flight asks for, in turn (StandingTarget.rung)."""
        self._profile: Profile | None = None
        """The measured profile the last tick saw: its reference perplexity is what the fallback's
        ceiling is relative to, and `planning_refusal` predicts from it."""
        self._threads_since = -math.inf
        """When the loop last changed the thread count: the live calibration fits only later steps."""
        self._pending: tuple[str, bool, float | None] | None = None
        """(plan spec before, for slack, rate asked for at stage 0 of a violation's re-plan, else None) of
        the re-plan in flight."""
        self.boost = 1.0
        """The factor re-plans ask for over floor * (1 + headroom) (module docstring, step 3)."""
        self.overhead = 1.0
        """Decode rate over the clients' rate over the steps the stats keep, at most `max_overhead`
        (WindowRate.overhead; kept as it was while nothing is decoded): windows are judged at the
        decode rate over this, and re-plans ask the planner for the floor times this."""
        self._asked: tuple[float, str] | None = None
        """(rate asked for, plan spec applied) of the last re-plan for a violation that changed the plan."""
        self._boost_for: tuple[int | None, float | None] = (None, None)
        """(thread count, floor) the boost was learned at."""
        self._task: asyncio.Task[None] | None = None

    # ----- the profile the planner plans from --------------------------------------------------
    def calibrated(self, profile: Profile) -> Profile:
        """`profile` under the live calibration (as measured when the loop is off)."""
        if not self.settings.enabled:
            return profile
        self.planned_with = self.calibration
        return recalibration.apply(self.calibration, profile)

    def planning_target(self, target: QosTarget) -> QosTarget:
        """The target a re-plan asks the planner for: the floor plus `headroom` when the loop is on; after
        failed re-plans, the floor itself, then the fastest plan within a ceiling (the stages:
        moeqos.executor.qos_control; a faster plan also gives the recalibration a second plan to tell
        the fixed cost from the expert calls)."""
        asked, self._fallback = qos_control.planning_target(
            target, self.settings, self._fallback, self._reference(), self.boost, self.overhead
        )
        self._rungs = (self._fallback,)
        return asked

    def _reference(self) -> float | None:
        """The reference perplexity of the profile last seen (None before one, or without one)."""
        return self._profile.reference_perplexity() if self._profile is not None else None

    def planning_refusal(self, plan: Plan) -> str | None:
        """Why a plan found for a violation's re-plan must not apply: it is predicted slower, under the
        live calibration, than the plan in force, which a re-plan for a floor exists to beat. None when
        it may (and for a re-plan for slack, or before a profile was seen). Seen in the demo: a Deploy
        for quality under a floor chose a plan at +18% perplexity, beyond the last stage's ceiling
        (+15%, `qos_control.planning_target`), so the fastest plan within that ceiling was a slower one
        (54.8 against 55-60 tok/s predicted) and the loop switched to it while short of the floor."""
        if self._pending is None or self._pending[1] or self._profile is None:
            return None
        in_force = recalibration.predict_seconds(self.calibration, self._profile, self._plan())
        found = recalibration.predict_seconds(self.calibration, self._profile, plan)
        if found <= in_force:
            return None
        return (
            f"its plan ({plan.describe()}) is predicted at {1 / found:.3g} tok/s, slower than the plan "
            f"in force ({1 / in_force:.3g})"
        )

    def planning_fallbacks(self, target: QosTarget) -> tuple[QosTarget, ...]:
        """What a violation's re-plan asks for next, at once, while the planner finds no plan: the later
        stages (after `planning_target`). Each stage that found nothing had cost a tick and a solve
        under the neighbour (measured: stages 0 and 1 failed in turn, 1-1.5 s each, while the windows
        read 4-14 tokens); the planner says at once that a stage is out of reach."""
        # the loop's own re-plan for a violation (`_pending` is set as it starts, before it asks)
        if not (self.settings.enabled and self._pending is not None and not self._pending[1]):
            return ()
        asks: list[QosTarget] = []
        while self._rungs[-1] < qos_control.FALLBACK_STAGES:
            asked, stage = qos_control.planning_target(
                target, self.settings, self._rungs[-1] + 1, self._reference(), self.boost, self.overhead
            )
            if stage <= self._rungs[-1]:  # no later stage to give (no ceiling)
                break
            asks.append(asked)
            self._rungs = (*self._rungs, stage)
        return tuple(asks)

    # ----- one look ----------------------------------------------------------------------------
    def tick(self, profile: Profile | None) -> Decision:
        """Recalibrate against `profile` (None: not measured yet), judge, and start a re-plan if due."""
        now = self.stats.clock()
        self._steer_threads(now)
        if profile is not None:
            self._profile = profile
        if profile is not None and self.settings.enabled:
            steps = self._at_threads(self.stats.steps(self.settings.calibration_window_s))
            if len(steps) < self.settings.min_tokens:  # a slow model: the last few steps, however old
                steps = self._at_threads(self.stats.steps(self.stats.horizon))[-self.settings.min_tokens :]
            steps = [step for step in steps if step.end > self._threads_since]
            if len(steps) >= self.settings.min_tokens:
                self.calibration = recalibration.fit(profile, steps)
        self._settle()
        floor = self.target.target.min_tokens_per_s if self.target.target else None
        kept = self.stats.window(self.stats.horizon)
        if kept.client_tokens_per_s is not None:
            self.overhead = min(kept.overhead, self.settings.max_overhead)
        window = self.window()
        sustained = self.stats.window(self.settings.sustained_s, self._plan(), self._threads())
        busy = self.target.state in BUSY
        decision = self.controller.decide(now, floor, window, busy, sustained, self.overhead)
        self._keep_boost_for(floor)
        # a thread change forgets the calibration (`_set_threads`): none fitted since means 0 steps
        unfitted = self._threads_since > -math.inf and self.calibration.steps == 0
        if decision.replan and profile is not None and self.settings.enabled and unfitted:
            decision = self._await_calibration(decision)
        asking = None
        if decision.replan and self.settings.enabled:
            failed = self.target.state is ReplanState.FAILED
            short = self._fallback_plan == self._plan().to_spec()
            escalate = (failed or short) and not decision.for_slack
            self._fallback = min(self._fallback + 1, qos_control.FALLBACK_STAGES) if escalate else 0
            if floor is not None:
                asking = self._learn_boost(floor, window)
            self._rungs = (self._fallback,)  # until the re-plan asks (planning_target, planning_fallbacks)
        if decision.replan and self.settings.enabled and self.target.replan():
            self.controller.replanned(now)
            self._pending = (self._plan().to_spec(), decision.for_slack, asking)
            decision = Decision(QosState.REPLANNING, True, decision.reason, decision.for_slack)
        self._log(decision)
        return decision

    def _await_calibration(self, decision: Decision) -> Decision:
        """Hold a re-plan until the calibration is re-fitted at the thread count in force: a re-plan
        just after a thread change would plan from the profile as measured (measured beside a
        one-core neighbour: a violation judged on 0.5 s of steps at one thread re-planned "as
        measured", kept the quality plan, and the floor waited 5 s more for the next re-plan). The
        fit needs `min_tokens` steps at the new count, a second or less."""
        why = f"{decision.reason} (waiting for {self.settings.min_tokens} steps at {self._threads()} threads)"
        return Decision(decision.state, False, why)

    def _keep_boost_for(self, floor: float | None) -> None:
        """Drop the boost when the thread count or the floor has changed since it was learned."""
        now_for = (self._threads(), floor)
        if now_for != self._boost_for:
            self.boost, self._asked, self._boost_for = 1.0, None, now_for

    def _learn_boost(self, floor: float, window: WindowRate) -> float | None:
        """Before a re-plan (for a violation or for slack): when the last one applied a plan that is
        still in force and the rate fell short of what it asked for, ask for that much more from now
        on. Returns the rate this one asks for (None at a fallback stage, which asks for something
        else)."""
        rate = window.stream_tokens_per_s
        if self._asked is not None and self._asked[1] == self._plan().to_spec() and rate:
            asked = self._asked[0]
            if rate < asked:
                self.boost = min(self.boost * asked / rate, self.settings.max_boost)
                log.info(
                    "qos boost: a re-plan asked %.2f tok/s, its plan measured %.2f: x%.2f",
                    asked,
                    rate,
                    self.boost,
                )
        self._asked = None
        if self._fallback != 0:
            return None
        return floor * self.overhead * (1 + self.settings.headroom) * self.boost

    def window(self) -> WindowRate:
        """The rate window: steps under the plan in force of the last `window_s` seconds, or of as long
        as `min_tokens` take at the floor when that is longer (a slow model on a slow machine)."""
        target = self.target.target
        floor = target.min_tokens_per_s if target else None
        seconds = self.settings.window_s
        if floor:
            seconds = min(max(seconds, self.settings.min_tokens / floor), self.stats.horizon)
        return self.stats.window(seconds, self._plan(), self._threads())

    # ----- the thread actuator ----------------------------------------------------------------------
    def _threads(self) -> int | None:
        knob = self._knob()
        return knob.wanted if knob is not None else None

    def _at_threads(self, steps: list[StepRecord]) -> list[StepRecord]:
        threads = self._threads()
        return steps if threads is None else [s for s in steps if s.threads == threads]

    def _steer_threads(self, now: float) -> None:
        """Sample other processes' CPU use; while a floor is held, let the thread policy change the count
        or judge its last change."""
        knob = self._knob()
        if self.cpu is None or knob is None:
            return
        self.cpu.sample()
        if not (self.settings.enabled and self.settings.threads.enabled):
            return
        target = self.target.target
        if target is None or target.min_tokens_per_s is None:  # no floor to hold: torch's own count
            if knob.wanted != knob.most:
                self._set_threads(knob, knob.most, now)
                self.thread_note = f"no floor to hold: back to {knob.most} threads"
                log.info("qos threads: %s", self.thread_note)
            return
        plan = self._plan()
        windows = self.settings.threads
        change = self.thread_policy.decide(
            now,
            self.cpu.others_cores(windows.cpu_window_s),
            knob.wanted,
            knob.most,
            lambda threads, since, need: self.stats.step_rate(plan, threads, since, need),
            self.cpu.others_cores(windows.fall_window_s),
        )
        if change is None:
            return
        if change.threads is not None:
            self._set_threads(knob, change.threads, now)
        self.thread_note = change.reason
        log.info("qos threads: %s", change.reason)

    def _set_threads(self, knob: ThreadKnob, threads: int, now: float) -> None:
        """Change the count, and forget the live calibration: what steps at another count said is not
        this count's speed, and steps at this count from before the change are another state of the
        machine (measured: back at 2 threads after a neighbour left, a fit to the 2 tok/s steps of 2
        threads beside it priced every plan 2x slow, and the next Deploy found no plan for its floor).
        Until steps at the new count come, plans are priced as profiled, and no re-plan starts
        (`_await_calibration`)."""
        knob.wanted = threads
        self._threads_since = now
        self.calibration = LiveCalibration()

    def _settle(self) -> None:
        """When the re-plan in flight has finished, tell the controller whether it changed the plan."""
        if self._pending is None or self.target.state in BUSY:
            return
        before, for_slack, asking = self._pending
        self._pending = None
        after = self._plan().to_spec()
        now = self.stats.clock()
        self.controller.settled(after != before, for_slack, now)
        chained = len(self._rungs) > 1
        found_none = self.target.state is ReplanState.FAILED
        rung = len(self._rungs) - 1 if found_none else min(self.target.rung, len(self._rungs) - 1)
        self._fallback = self._rungs[rung]  # the stage whose plan applied, or the last one tried
        if after != before and asking is not None and rung == 0:
            self._asked = (asking, after)
        if after != before:
            self._fallback_plan = after if self._fallback > 0 and not for_slack else None
        # a failed stage with later ones untried goes on at the next tick; a failed ladder waits
        if found_none and not for_slack and not chained and self._fallback < qos_control.FALLBACK_STAGES:
            self.controller.allow_now(now)

    def _log(self, decision: Decision) -> None:
        changed = (decision.state, decision.replan) != (self._last.state, self._last.replan)
        if decision.replan or changed:
            action = "re-plan" if decision.replan else "hold"
            log.info("qos %s: %s [%s]", action, decision.reason, self.calibration.describe())
        self._last = decision

    # ----- reporting ---------------------------------------------------------------------------
    def status(self, profile: Profile | None) -> QosStatus:
        """The floor as held now, for GetInfo (`profile`: the measured one, for the prediction)."""
        target = self.target.target
        floor = target.min_tokens_per_s if target else None
        predicted = None
        if profile is not None:
            seconds = recalibration.predict_seconds(self.planned_with, profile, self._plan())
            predicted = 1.0 / max(seconds, 1e-9) / self.overhead
        state = self._last.state
        if self.target.state in BUSY:
            state = QosState.REPLANNING
        elif floor is None:
            state = QosState.NO_FLOOR
        return QosStatus(
            state=state,
            loop=self.settings.enabled,
            floor_tokens_per_s=floor,
            predicted_tokens_per_s=predicted,
            measured_tokens_per_s=qos_control.clients_rate(self.window(), self.overhead),
            window_seconds=self.settings.window_s,
            calibration=self.calibration.describe(),
            last_decision=self._last.reason + self._threads_said(),
        )

    def _threads_said(self) -> str:
        threads = self._threads()
        if threads is None or self.cpu is None:
            return ""
        return f"; {threads} threads" + (f" ({self.thread_note})" if self.thread_note else "")

    # ----- running -----------------------------------------------------------------------------
    def start(self, profile: Callable[[], Profile | None]) -> None:
        """Tick every `tick_s` in the background until `stop()`; `profile()` is the measured profile."""
        self._task = asyncio.get_running_loop().create_task(self._run(profile))

    async def _run(self, profile: Callable[[], Profile | None]) -> None:
        while True:
            try:
                self.tick(profile())
            except Exception:  # the loop must outlive one bad tick; the plan in force keeps serving
                log.exception("qos loop tick failed")
            await asyncio.sleep(self.settings.tick_s)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
