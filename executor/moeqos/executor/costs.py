"""Timing measurements for a profile: one-token expert calls per (precision, tier), disk loads, and the
fixed decode cost outside the experts. Calls and loads: medians over `repeats` after one warm-up call,
timed with cold caches (see `cold_median_seconds`). Calls are then calibrated against whole decode
steps together with the fixed cost (`calibrate`), loads likewise in moeqos.executor.disk_calibration."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from moeqos.core.errors import OverBudget
from moeqos.core.precision import Precision
from moeqos.core.profile import CallCost, LoadCost
from moeqos.core.tier import DISK
from moeqos.executor.measurement import Measurable
from moeqos.executor.step_timing import (
    PAIRS,
    CallSeconds,
    ExpertsOff,
    TurnedIn,
    decode_step,
    fastest_round,
    paired_scale,
    paired_steps,
)

T = TypeVar("T")

REPRESENTATIVE = (0, 0)
"""The (layer, expert) whose calls are timed; every expert of a layer has the same shape."""


CACHE_FLUSH_BYTES = 128 << 20
"""Bytes written between timed expert calls to push the expert's weights out of the caches (larger than
the last-level cache of current server CPUs and than an H100's 50 MB L2)."""


def cold_median_seconds(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time of fn() over `repeats` runs after a warm-up, with the caches flushed before each
    run and accelerators synchronised.

    During decode an expert's weights are touched once per token and all experts together far exceed
    the caches, so every call streams its weights from memory. Timing one expert in a hot loop keeps
    it in cache and makes the bytes-heavy precisions look as cheap as the light ones (measured on the
    default model: hot, int4 and int8 calls cost the same and the planner saw no reason for int4,
    while whole decode steps at int4 run 1.5x faster than at int8).
    """
    flush = torch.zeros(CACHE_FLUSH_BYTES, dtype=torch.uint8, device=device)  # [N]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        flush.add_(1)  # a write pass over [N], untimed
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cold_median_over(fn: Callable[[T], object], items: Sequence[T], repeats: int, device: str) -> float:
    """`cold_median_seconds` of `fn(item)` with the items taken in turn (the warm-up takes the first):
    for timing reads that must not find their data already cached."""
    turn = itertools.cycle(items)
    return cold_median_seconds(lambda: fn(next(turn)), repeats, device)


def call_costs(
    runtime: Measurable, x: torch.Tensor, precisions: Sequence[Precision], repeats: int, group_size: int
) -> list[CallCost]:
    """One-token call time of the representative expert in each of `precisions` on every tier.

    `disk` costs the call once the expert sits in a slot (the load is a LoadCost); `cpu` on an
    accelerator follows the host policy (compute on the host, or copy to the device per call).
    """
    device = runtime.config.device
    x = x[:1].to(device)  # [1, H] in the dense dtype
    costs = []
    for precision in precisions:
        variant = (*REPRESENTATIVE, precision, precision.group(group_size))
        on_device = runtime.factory.build(variant, device)
        nbytes = on_device.nbytes()
        for tier in runtime.budgets:
            fn = _call(runtime, variant, tier, on_device, x)
            costs.append(CallCost(precision, tier, nbytes, cold_median_seconds(fn, repeats, device)))
        runtime.factory.retire(variant, on_device)
    return costs


def _call(
    runtime: Measurable, variant: tuple, tier: str, on_device: object, x: torch.Tensor
) -> Callable[[], object]:
    device = runtime.config.device
    if tier in (device, DISK):
        return lambda: on_device(x)  # type: ignore[operator]
    on_host = runtime.factory.build(variant, tier)
    if runtime.config.host_policy == "compute":
        return lambda: on_host(x.to(tier)).to(device)
    return lambda: on_host.to_device(device)(x)


def load_costs(
    runtime: Measurable, precisions: Sequence[Precision], repeats: int, group_size: int
) -> list[LoadCost]:
    """Time to read an expert from the variant cache into a slot, per precision.

    Each timed load reads a different expert (expert 0 of successive layers), with the CPU caches
    flushed and the file in the state serving leaves it (in the page cache, or dropped from it under
    `disk_reads=uncached`): a miss during decoding never finds the expert it loads in any cache, and
    re-reading one file in a loop made loads look 1.3-2x cheaper than the misses of a decode run.
    """
    device = runtime.config.device
    layers = range(min(runtime.num_layers, repeats + 1))
    costs = []
    for precision in precisions:
        variants = [(layer, REPRESENTATIVE[1], precision, precision.group(group_size)) for layer in layers]
        for variant in variants:
            runtime.factory.ensure_file(variant, device)
            # settle the file's page-cache state as serving would; every variant has the same size
            nbytes = runtime.factory.load(variant, device)[1]
        seconds = cold_median_over(lambda v: runtime.factory.load(v, device), variants, repeats, device)
        costs.append(LoadCost(precision, nbytes, seconds))
    return costs


FIXED_ROUNDS = 7
"""Rounds of decode steps timed for the fixed cost (at least `repeats`)."""


def calibrate(
    runtime: Measurable, prompt: list[int], repeats: int, costs: Sequence[CallCost]
) -> tuple[float, list[CallCost]]:
    """The fixed decode-step time outside the experts, and `costs` calibrated to whole decode steps.

    Method: prefill `prompt`, then time single-token steps. The fixed part (attention, norms, router,
    head, overhead) is timed with expert calls switched off: where no call can be calibrated, the
    fastest of max(repeats, FIXED_ROUNDS) rounds of STEPS_PER_ROUND steps (load on the machine only
    ever adds time; a median of a few single steps swung 20x on a busy 2-core machine); else the
    median of the 16 such steps paired with the served plan's below, so that the fixed cost and the
    calls' are both typical steps' (the fastest round beside medians of pair differences predicted
    every plan 8-22% fast). The cold-cache call costs say what one call costs alone, but in a real
    step the hardware prefetches and overlaps part of each expert's weight stream, and the batched
    dispatch computes a layer's experts of one precision together, so a precision's real share of a
    step is not its cold cost (measured on the default model: cold bf16 calls 1.4x the cost of int8
    ones, while whole steps at bf16 and int8 ran at the same speed). So each precision gets its own
    factor, from pairs of steps (moeqos.executor.step_timing.paired_steps):
    - the served plan's precisions: a step with the experts on against one with them off, over the
      plan's cold-cost sum per step, the MoE dispatch around each call folded in;
    - every other precision on the served plan's tiers (`precision_scale`): a step with the experts
      switched to it against one of the served plan.
    With disk experts or precisions `costs` lacks in the served plan, the costs are returned as
    measured; a precision whose trial plan cannot be served here takes the served plan's factor. Each
    timing runs `exclusive()`ly, so no request sees the experts switched off.
    """
    seconds = {(c.precision, c.tier): c.seconds for c in costs}
    plan = runtime.plan
    costed = all(a.tier != DISK and (a.precision, a.tier) in seconds for _, a in plan.items())
    device = runtime.config.device
    with runtime.exclusive():
        step = decode_step(runtime, prompt)
        if not costed:
            return fastest_round(step, max(repeats, FIXED_ROUNDS), device, ExpertsOff(runtime)), list(costs)
        calls = CallSeconds(runtime, plan, seconds, uncredited=frozenset(range(runtime.num_layers)))
        pairs = paired_steps(step, PAIRS, device, ExpertsOff(runtime), calls, calls)
    off = statistics.median(pair.baseline for pair in pairs)  # typical, as the pairs' differences are
    scale = paired_scale(pairs)
    served = 1.0 if scale is None else _clamped(scale)
    scales = {a.precision: served for _, a in plan.items()}
    calibrated = {key: value * served for key, value in seconds.items()}
    for precision in dict.fromkeys(c.precision for c in costs):
        if precision not in scales:
            scale = precision_scale(runtime, prompt, calibrated, seconds, precision)
            scales[precision] = served if scale is None else scale
    return off, [dataclasses.replace(c, seconds=c.seconds * scales[c.precision]) for c in costs]


def precision_scale(
    runtime: Measurable,
    prompt: list[int],
    calibrated: dict[tuple[Precision, str], float],
    cold: dict[tuple[Precision, str], float],
    precision: Precision,
) -> float | None:
    """The factor from `precision`'s cold call costs to its share of a real decode step (`calibrate`).

    Pairs of steps: one of the served plan, its calls credited at their `calibrated` cost, and one of
    a trial plan with the experts of every layer served in `precision` (each on its tier), less the
    other layers' calls at their `calibrated` cost; the difference is what the trial layers' calls
    cost, over their `cold` sum. Every layer where the trial fits the budgets beside the served plan
    (`Measurable.alternating` keeps both plans' experts, so the turn between a pair's steps builds
    nothing): a third of them gave a third of the difference to measure against the same noise; every
    third layer where only that fits. None where neither can be measured: a tier without a cold cost
    in `precision`, or over a tier's budget. The served plan is back afterwards.
    """
    served = runtime.plan
    mixed = calibrated | {key: value for key, value in cold.items() if key[0] == precision}
    device = runtime.config.device
    for timed in (frozenset(range(runtime.num_layers)), frozenset(range(0, runtime.num_layers, 3))):
        trial = served.with_layers(timed, precision)
        if any((precision, a.tier) not in cold for _, a in trial.items()):
            return None
        try:
            with runtime.alternating(trial) as turn, runtime.exclusive():  # the apply lock first
                step = decode_step(runtime, prompt)
                baseline = CallSeconds(runtime, served, calibrated)
                calls = CallSeconds(runtime, trial, mixed, uncredited=timed)
                scale = paired_scale(
                    paired_steps(step, PAIRS, device, baseline, TurnedIn(runtime, turn, calls), calls)
                )
        except OverBudget:  # raised by `alternating` before anything is built
            continue
        return None if scale is None else _clamped(scale)
    return None


def _clamped(scale: float) -> float:
    """A calibration factor kept within 0.2-5x: beyond that the timing, not the model, is wrong."""
    return min(max(scale, 0.2), 5.0)
