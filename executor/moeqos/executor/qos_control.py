"""The QoS controller's policy: from a measured window to a verdict and, maybe, a re-plan. Pure.

    controller = QosController(LoopSettings())
    decision = controller.decide(now, floor, measured, busy)   # measured: WindowRate of the plan in force

Rules, in order (r = the streams' decode rate over the window divided by the overhead of their
clients' rate, i.e. the rate the clients see with their first tokens' waits and prefills
(moeqos.executor.live_stats; the overhead is measured over many requests, so a short window is not
judged by whether a prefill fell into it); F = floor):
- no floor: nothing to hold;
- a re-plan in flight (or retrying): wait for it; never start a second (the first keeps its backoff);
- fewer than `min_tokens` decode tokens under the plan in force: too little to judge, the floor counts
  as met (unless the window was long enough for `min_tokens` at the floor and a stream ran in it);
- r < F * (1 - tolerance): violated; re-plan once `min_interval_s` has passed since the last re-plan
  started, or since the plan it applied took over, whichever is later;
- r > F * (1 + slack): met with quality left on the table; re-plan once `slack_interval` has passed.
  A slack re-plan that keeps the same plan doubles that interval (up to `max_slack_interval_s`), so a
  plan that is already the best one is not asked for again and again; any plan change resets it;
- r_long < F over `sustained_s` (steps under the plan in force spanning at least SUSTAINED_COVER of
  it): short of the floor, a violation too. The tolerance is there for a noisy window, not for a plan
  that lands a few percent short and stays there (measured: the loop held 4% under the floor for 40 s).
The gap between 1 - tolerance and 1 + slack (with the plan asked for at F * (1 + headroom)) is the
hysteresis band: a plan chosen to land inside it triggers neither rule.

What a re-plan for a violation asks the planner for (`planning_target`) steps down while re-plans fail
(no plan meets the floor under the calibrated profile), and back up after one applies. The planner
predicts decode steps, so each floor below is first raised by the measured overhead (decode rate over
the clients' rate: the prefills and waits between a client's tokens), and by the boost (the model's
error on plan changes, learned from re-plans that landed short: moeqos.executor.qos_loop):
- stage 0: F * (1 + headroom), the target's ceiling kept;
- stage 1: F itself: the best plan that meets the floor, so int2 comes in only when nothing else does
  (the boost kept: a plan asked for at the floor lands as far short as one asked for above it; stage
  1 asking for less than a plan that already fell short put one more short plan between the
  neighbour's start and the fallback, 5 s of missed windows);
- stage 2: the fastest plan within the target's ceiling.
A plan found at any stage is turned down when the live calibration predicts it slower than the plan
in force (moeqos.executor.qos_loop.QosLoop.planning_refusal): a re-plan for a floor exists to beat it.
A target without a ceiling gets one for every stage: `fallback_ppl_increase` over the reference
(full-precision) perplexity. The loop never asks for the fastest plan of all, whose quality can be
catastrophic (int2) and whose switch is the largest, and no stage trades more quality than the last
one may (measured: a boosted stage-0 ask with no ceiling chose int4 attention, perplexity 79 -> 114,
where the last stage's plan at +15% held the floor in all of its windows). Without a measured
reference there is no ceiling to give, and stage 1 is kept.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from moeqos.core.qos import Objective, QosTarget
from moeqos.core.service_types import QosState
from moeqos.executor.live_stats import WindowRate
from moeqos.executor.thread_knob import ThreadSettings


@dataclass(frozen=True)
class LoopSettings:
    """Knobs of the closed loop (defaults suit a CPU executor decoding ~10 tok/s)."""

    enabled: bool = True
    """False: open loop (rates measured and reported, never acted on; profiles served as measured)."""
    window_s: float = 3.0
    """Rates are judged over the last this many seconds (only steps under the plan in force)."""
    tolerance: float = 0.05
    """Violated when the measured rate is below floor * (1 - tolerance)."""
    slack: float = 0.25
    """Quality left on the table when the measured rate is above floor * (1 + slack)."""
    headroom: float = 0.12
    """Re-plans ask the planner for floor * (1 + headroom), so noise does not put the plan at the edge."""
    min_interval_s: float = 4.0
    """At least this long between two re-plans for a violation, and after a re-plan's plan took over."""
    slack_interval_s: float = 8.0
    """At least this long between a re-plan and a re-plan for slack."""
    max_slack_interval_s: float = 64.0
    """Longest wait between slack re-plans that keep finding the same plan."""
    min_tokens: int = 8
    """Decode tokens a window needs before it is judged."""
    sustained_s: float = 5.0
    """A rate below the floor itself (inside the tolerance) over this long is a violation too."""
    max_boost: float = 1.5
    """A re-plan for a violation after one that applied and still fell short asks for more, by the
    factor it fell short (compounded), at most this factor over floor * (1 + headroom)
    (moeqos.executor.qos_loop: the model's error on plan changes, learned while resources stay)."""
    max_overhead: float = 1.5
    """At most this factor of decode rate over the clients' rate is asked for (short requests with long
    prompts spend most of a client's time in prefill, which a plan speeds up far less than decode)."""
    tick_s: float = 0.5
    """How often the loop looks."""
    calibration_window_s: float = 6.0
    """Recalibration fits the steps of the last this many seconds."""
    threads: ThreadSettings = field(default_factory=ThreadSettings)
    """The torch thread count as a second actuator (moeqos.executor.thread_knob)."""
    fallback_ppl_increase: float = 0.15
    """When even the floor itself cannot be met, the fastest plan is asked for within the target's
    ceiling, or, without one, within this relative increase over the reference perplexity (0.15: +15%;
    on the default model uniform int4 is +11%, int3 +88%, int2 +27000%)."""

    def __post_init__(self) -> None:
        if not (0 <= self.tolerance < 1 and 0 <= self.headroom < self.slack):
            raise ValueError("need 0 <= tolerance < 1 and 0 <= headroom < slack")
        if self.fallback_ppl_increase < 0:
            raise ValueError("fallback_ppl_increase must be >= 0")
        if self.max_boost < 1 or self.max_overhead < 1:
            raise ValueError("max_boost and max_overhead must be >= 1")
        positive = (self.window_s, self.min_interval_s, self.slack_interval_s, self.tick_s, self.sustained_s)
        if min(positive) <= 0 or self.calibration_window_s <= 0 or self.min_tokens < 2:
            raise ValueError("windows, intervals and the tick must be positive; min_tokens >= 2")


@dataclass(frozen=True)
class Decision:
    """The controller's verdict on one window."""

    state: QosState
    replan: bool
    reason: str
    for_slack: bool = False
    """The re-plan (if any) is for quality left on the table, not for a violation."""


class QosController:
    """Judges windows against the floor and rations re-plans (see the module docstring)."""

    def __init__(self, settings: LoopSettings) -> None:
        self.settings = settings
        self.last_replan = -math.inf
        self.slack_interval = settings.slack_interval_s

    def decide(
        self,
        now: float,
        floor: float | None,
        window: WindowRate,
        busy: bool,
        sustained: WindowRate | None = None,
        overhead: float = 1.0,
    ) -> Decision:
        """The verdict at `now` on `window` (steps under the plan in force); `busy`: a re-plan is running;
        `sustained`: the same over `sustained_s` (None: that rule is not applied); `overhead`: decode
        rate over the clients' rate (WindowRate.overhead)."""
        s = self.settings
        if floor is None:
            return Decision(QosState.NO_FLOOR, False, "no throughput floor")
        if busy:
            return Decision(QosState.REPLANNING, False, "re-plan in progress")
        rate = clients_rate(window, overhead)
        # A window long enough for min_tokens at the floor that holds fewer, from a running stream,
        # is itself evidence of a rate below the floor: judged, not skipped.
        sized_for_floor = window.seconds * floor >= s.min_tokens and window.streams > 0
        if rate is None or (window.tokens < s.min_tokens and not sized_for_floor):
            return Decision(QosState.MET, False, f"{window.tokens} tokens in the window: too few to judge")
        if rate < floor * (1 - s.tolerance):
            why = (
                f"floor violated: {rate:.2f} < {floor:g} tok/s - {s.tolerance:.0%} over {window.seconds:.1f}s"
            )
            return self._maybe(now, s.min_interval_s, QosState.VIOLATED, why)
        if rate > floor * (1 + s.slack):
            why = f"slack: {rate:.2f} > {floor:g} tok/s + {s.slack:.0%}; asking for a higher-quality plan"
            return self._maybe(now, self.slack_interval, QosState.MET, why, slack=True)
        held = clients_rate(sustained, overhead) if sustained is not None else None
        if sustained is not None and held is not None:
            spanned = sustained.covered
            if held < floor and spanned >= SUSTAINED_COVER * s.sustained_s:
                why = f"short of the floor: {held:.2f} < {floor:g} tok/s over {spanned:.1f}s"
                return self._maybe(now, s.min_interval_s, QosState.VIOLATED, why)
        return Decision(QosState.MET, False, f"met: {rate:.2f} tok/s vs floor {floor:g}")

    def replanned(self, now: float) -> None:
        """Record that a re-plan started at `now`."""
        self.last_replan = now

    def settled(self, changed: bool, for_slack: bool, now: float) -> None:
        """A re-plan finished at `now`: back off slack re-plans that changed nothing; a
        change resets that, and the intervals count from the change: a new plan is judged on its own
        steps (a switch that quantizes a dense element can take seconds, and a window just after it
        is the switch's cost, not the plan's rate; measured: a boost learned there asked for 51 tok/s)."""
        if changed:
            self.slack_interval = self.settings.slack_interval_s
            self.last_replan = max(self.last_replan, now)
        elif for_slack:
            self.slack_interval = min(self.slack_interval * 2, self.settings.max_slack_interval_s)

    def allow_now(self, now: float) -> None:
        """The next re-plan for a violation may start at `now` (the last one found no plan: nothing
        changed that needs measuring before the next fallback stage is tried)."""
        self.last_replan = min(self.last_replan, now - self.settings.min_interval_s)

    def _maybe(self, now: float, interval: float, state: QosState, why: str, slack: bool = False) -> Decision:
        wait = self.last_replan + interval - now
        if wait > 0:
            return Decision(state, False, f"{why} (next re-plan allowed in {wait:.1f}s)")
        return Decision(state, True, why, for_slack=slack)


def clients_rate(window: WindowRate, overhead: float) -> float | None:
    """The window's rate as the clients see it: its decode rate over `overhead` (None without one)."""
    rate = window.stream_tokens_per_s
    return rate / overhead if rate is not None else None


SUSTAINED_COVER = 0.9
"""Share of `sustained_s` the steps under the plan in force must span before that rule judges them."""

FALLBACK_STAGES = 2
"""The last stage of `planning_target` (see the module docstring)."""


def planning_target(
    target: QosTarget,
    settings: LoopSettings,
    stage: int,
    reference: float | None,
    boost: float = 1.0,
    overhead: float = 1.0,
) -> tuple[QosTarget, int]:
    """What a re-plan at fallback `stage` asks the planner for, and the stage actually used (2 becomes
    1 without a ceiling to give); `reference`: the reference perplexity, if measured; `boost`: the
    factor stages 0 and 1 ask for over their floors (LoopSettings.max_boost); `overhead`: the decode
    rate the clients' floor needs, per tok/s of it (WindowRate.overhead)."""
    floor = target.min_tokens_per_s
    if not settings.enabled or floor is None:
        return target, 0
    decode_floor = floor * overhead * boost
    has_ceiling = target.max_perplexity is not None or target.max_perplexity_increase is not None
    if not has_ceiling and reference is not None:  # the objective kept: a ceiling alone would mean speed
        ceiling = reference * (1 + settings.fallback_ppl_increase)
        target = dataclasses.replace(target, max_perplexity=ceiling, objective=target.effective_objective)
    if stage <= 0:
        return dataclasses.replace(target, min_tokens_per_s=decode_floor * (1 + settings.headroom)), 0
    if stage == 1 or not (has_ceiling or reference is not None):
        return dataclasses.replace(target, min_tokens_per_s=decode_floor), 1
    return dataclasses.replace(target, min_tokens_per_s=None, objective=Objective.SPEED), FALLBACK_STAGES
