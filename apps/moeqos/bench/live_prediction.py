"""A held-out plan's decode speed as the closed loop would predict it: from the profile recalibrated on
the decode steps of the plans measured just before it (moeqos.executor.recalibration, the fit the QoS
loop makes and GetProfile serves), through the planner's latency model.

Why beside the profile's own prediction: on a shared machine the host's speed drifts by 20-50% within
minutes, so a profile measured minutes before a plan is decoded mispredicts every plan by that drift
whatever the model's shape (two frontier runs on 2026-12-04: every held-out plan over-predicted by
11-70%; the same profile's uniform plans, measured three minutes later on a faster host, 28-37% under).
The live prediction never sees the plan it predicts: only other plans' steps, as the executor sees its
own past steps when it re-plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moeqos.core.plan import Plan
from moeqos.core.profile import Profile
from moeqos.executor import recalibration
from moeqos.executor.live_stats import StepRecord
from moeqos.planner.latency_model import LatencyModel

LIVE_PLANS = 2
"""Plans measured just before a held-out plan whose steps recalibrate the profile for it (two: the
fixed and call scales are only told apart by plans that mix them differently)."""


def step_records(history: Sequence[tuple[Plan, Any]]) -> list[StepRecord]:
    """Decode steps of measured plans: per (plan, Speed) each run's tokens after the first, each at the
    run's mean interval (the Speed's samples are rates over those tokens)."""
    records: list[StepRecord] = []
    clock = 0.0
    for stream, (plan, speed) in enumerate(history):
        for rate in speed.samples:
            for _ in range(max(speed.tokens - 1, 1)):
                clock += 1.0 / rate
                records.append(StepRecord(stream, clock, 1.0 / rate, plan))
    return records


def live_tokens_per_s(profile: Profile, plan: Plan, history: Sequence[tuple[Plan, Any]]) -> float:
    """`plan`'s tokens/s predicted from `profile` recalibrated on the steps of the last LIVE_PLANS
    entries of `history` ((plan, Speed) in measurement order); the profile's own prediction when the
    history is empty."""
    steps = step_records(history[-LIVE_PLANS:])
    calibrated = recalibration.apply(recalibration.fit(profile, steps), profile)
    return LatencyModel.fit(calibrated).predict_tokens_per_s(plan)
