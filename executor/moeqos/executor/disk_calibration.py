"""Disk load costs calibrated against whole decode steps, as `moeqos.executor.costs.calibrate` does for calls.

A load timed alone (moeqos.executor.costs.load_costs) misses what a miss costs the step around it: the read
pushes the rest of the step's working set out of the caches and the evicted slot's memory is freed and
taken again. Measured on the default model with uncached reads: 1.6-2 ms per miss beyond the timed
load, which made disk-heavy plans look 20-37% faster than they ran.

Method, per precision with a load cost (the grouped precisions share one layout, so int4's result
stands for int3 and int2): serve that precision everywhere with the last quarter of the layers on
disk, time rounds of single-token steps crediting every expert call its calibrated compute cost (see
moeqos.executor.step_timing), and count the pool's misses; the load cost becomes

    max((step - fixed - credited compute) / misses per step, the timed load).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from moeqos.core.errors import OverBudget
from moeqos.core.plan import Assignment, Plan
from moeqos.core.precision import Precision, expert_bytes
from moeqos.core.profile import CallCost, LoadCost
from moeqos.core.tier import DISK
from moeqos.executor.measurement import Measurable
from moeqos.executor.step_timing import STEPS_PER_ROUND, CallSeconds, decode_step, fastest_round

DISK_SHARE = 0.25
"""Share of the layers (the last ones) whose experts are on disk while calibrating."""


def disk_plan(runtime: Measurable, precision: Precision) -> Plan:
    """Every expert in `precision`; the last DISK_SHARE of the layers on disk (more if the device
    tier's budget cannot hold the rest), the others on the device."""
    device = runtime.config.device
    hidden, intermediate = runtime.shape
    layer_bytes = runtime.num_experts * expert_bytes(hidden, intermediate, precision, runtime.plan.group_size)
    fitting_layers = runtime.budgets.get(device, 0) // layer_bytes
    first_on_disk = min(runtime.num_layers - max(1, round(runtime.num_layers * DISK_SHARE)), fitting_layers)
    rows = tuple(
        tuple(
            Assignment(precision, DISK if layer >= first_on_disk else device)
            for _ in range(runtime.num_experts)
        )
        for layer in range(runtime.num_layers)
    )
    return Plan(rows, runtime.plan.group_size)


def calibrate_loads(
    runtime: Measurable,
    prompt: list[int],
    rounds: int,
    fixed_seconds: float,
    costs: Sequence[CallCost],
    loads: Sequence[LoadCost],
) -> list[LoadCost]:
    """`loads` with each precision's seconds replaced by its effective miss cost (module docstring);
    a precision without call costs on both tiers, whose plan the budgets cannot hold, or whose plan
    never missed, keeps its measured load."""
    seconds = {(c.precision, c.tier): c.seconds for c in costs}
    device = runtime.config.device
    effective: dict[Precision, float] = {}
    for load in loads:
        precision = load.precision
        shared = next((p for p in effective if p.is_grouped and precision.is_grouped), None)
        if shared is not None:
            effective[precision] = effective[shared] * load.seconds / _measured(loads, shared)
            continue
        if (precision, device) not in seconds or (precision, DISK) not in seconds:
            continue
        try:
            miss = _miss_seconds(
                runtime, disk_plan(runtime, precision), prompt, rounds, fixed_seconds, seconds
            )
        except OverBudget:  # the tiers' budgets cannot hold the calibration plan: keep the timed load
            continue
        if miss is not None:
            effective[precision] = max(miss, load.seconds)  # the miss includes the load; below it is noise
    return [dataclasses.replace(c, seconds=effective.get(c.precision, c.seconds)) for c in loads]


def _measured(loads: Sequence[LoadCost], precision: Precision) -> float:
    return next(c.seconds for c in loads if c.precision == precision)


def _miss_seconds(
    runtime: Measurable,
    plan: Plan,
    prompt: list[int],
    rounds: int,
    fixed_seconds: float,
    seconds: dict[tuple[Precision, str], float],
) -> float | None:
    """Seconds one miss adds to a decode step under `plan` (None if no call missed)."""
    with runtime.serving(plan), runtime.exclusive():
        step = decode_step(runtime, prompt)
        calls = CallSeconds(runtime, plan, seconds)
        before = runtime.store_stats().misses
        step_minus_calls = fastest_round(step, rounds, runtime.config.device, calls)
        misses = (runtime.store_stats().misses - before) / ((rounds + 1) * STEPS_PER_ROUND)
    if misses <= 0:
        return None
    return max(step_minus_calls - fixed_seconds, 0.0) / misses
