"""Timing measurements for a profile: one-token expert calls per (precision, tier), disk loads, and the
fixed decode cost outside the experts. Calls and loads: medians over `repeats` after one warm-up call.
The fixed cost: see fixed_seconds (minimum over rounds, robust to a loaded machine)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from executor.loader import moe_blocks
from moeqos.precision import Precision
from moeqos.profile import CallCost, LoadCost
from moeqos.tier import DISK

if TYPE_CHECKING:
    from executor.runtime import ExecutorRuntime

REPRESENTATIVE = (0, 0)
"""The (layer, expert) whose calls are timed; every expert of a layer has the same shape."""


def median_seconds(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time of fn() over `repeats` runs after a warm-up, synchronising accelerators."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def call_costs(
    runtime: ExecutorRuntime, x: torch.Tensor, precisions: Sequence[Precision], repeats: int, group_size: int
) -> list[CallCost]:
    """One-token call time of the representative expert in each of `precisions` on every tier.

    `disk` costs the call once the expert sits in a slot (the load is a LoadCost); `cpu` on an
    accelerator follows the host policy (compute on the host, or copy to the device per call).
    """
    device = runtime.config.device
    x = x[:1].to(device)  # [1, H] in the dense dtype
    costs = []
    for precision in precisions:
        variant = (*REPRESENTATIVE, precision, group_size)
        on_device = runtime.factory.build(variant, device)
        nbytes = on_device.nbytes()
        for tier in runtime.budgets:
            fn = _call(runtime, variant, tier, on_device, x)
            costs.append(CallCost(precision, tier, nbytes, median_seconds(fn, repeats, device)))
        runtime.factory.retire(variant, on_device)
    return costs


def _call(
    runtime: ExecutorRuntime, variant: tuple, tier: str, on_device: object, x: torch.Tensor
) -> Callable[[], object]:
    device = runtime.config.device
    if tier in (device, DISK):
        return lambda: on_device(x)  # type: ignore[operator]
    on_host = runtime.factory.build(variant, tier)
    if runtime.config.host_policy == "compute":
        return lambda: on_host(x.to(tier)).to(device)
    return lambda: on_host.to_device(device)(x)


def load_costs(
    runtime: ExecutorRuntime, precisions: Sequence[Precision], repeats: int, group_size: int
) -> list[LoadCost]:
    """Time to read the representative expert from the variant cache into a slot, per precision."""
    device = runtime.config.device
    costs = []
    for precision in precisions:
        variant = (*REPRESENTATIVE, precision, group_size)
        runtime.factory.ensure_file(variant)
        nbytes = runtime.factory.load(variant, device)[1]
        seconds = median_seconds(lambda v=variant: runtime.factory.load(v, device), repeats, device)  # type: ignore[misc]
        costs.append(LoadCost(precision, nbytes, seconds))
    return costs


FIXED_ROUNDS = 7
"""Rounds of decode steps timed for the fixed cost (at least `repeats`)."""
FIXED_STEPS = 4
"""Decode steps per round; a round's time is averaged over them."""


def fixed_seconds(runtime: ExecutorRuntime, prompt: list[int], repeats: int) -> float:
    """Decode-step time with expert calls switched off (attention, norms, router, head, overhead).

    Method: prefill `prompt`, warm up with FIXED_STEPS steps, then time max(repeats, FIXED_ROUNDS)
    rounds of FIXED_STEPS single-token steps each; the result is the minimum over rounds of the mean
    step time. Other load on the machine only ever adds time, so the fastest round is the best estimate
    of the undisturbed cost (a median of a few single steps swung 20x on a busy 2-core machine); averaging
    within a round keeps the minimum from picking one lucky step. Runs under the model lock, so no
    request sees the experts switched off.
    """
    from transformers import DynamicCache

    blocks = moe_blocks(runtime.lm, runtime.adapter)
    sync = torch.cuda.synchronize if runtime.config.device.startswith("cuda") else (lambda: None)
    with runtime.model_lock:
        cache = DynamicCache(config=runtime.hf_config)
        runtime.forward_logits(torch.tensor([prompt]), cache, keep=1)
        token = torch.tensor([[prompt[-1]]])  # [1, 1]
        for block in blocks:
            block.experts_enabled = False
        try:
            rounds = []
            for _ in range(max(repeats, FIXED_ROUNDS) + 1):  # the first round is the warm-up
                start = time.perf_counter()
                for _ in range(FIXED_STEPS):
                    runtime.forward_logits(token, cache, keep=1)
                sync()
                rounds.append((time.perf_counter() - start) / FIXED_STEPS)
            return min(rounds[1:])
        finally:
            for block in blocks:
                block.experts_enabled = True
