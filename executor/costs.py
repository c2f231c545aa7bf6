"""Timing measurements for a profile: one-token expert calls per (precision, tier), disk loads, and the
fixed decode cost outside the experts. Medians over `repeats` after one warm-up call."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
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


def call_costs(runtime: ExecutorRuntime, x: torch.Tensor, repeats: int, group_size: int) -> list[CallCost]:
    """One-token call time of the representative expert in every precision on every tier.

    `disk` costs the call once the expert sits in a slot (the load is a LoadCost); `cpu` on an
    accelerator follows the host policy (compute on the host, or copy to the device per call).
    """
    device = runtime.config.device
    x = x[:1].to(device)  # [1, H] in the dense dtype
    costs = []
    for precision in Precision:
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


def load_costs(runtime: ExecutorRuntime, repeats: int, group_size: int) -> list[LoadCost]:
    """Time to read the representative expert from the variant cache into a slot, per precision."""
    device = runtime.config.device
    costs = []
    for precision in Precision:
        variant = (*REPRESENTATIVE, precision, group_size)
        runtime.factory.ensure_file(variant)
        nbytes = runtime.factory.load(variant, device)[1]
        seconds = median_seconds(lambda v=variant: runtime.factory.load(v, device), repeats, device)  # type: ignore[misc]
        costs.append(LoadCost(precision, nbytes, seconds))
    return costs


def fixed_seconds(runtime: ExecutorRuntime, prompt: list[int], repeats: int) -> float:
    """Median decode-step time with expert calls switched off (attention, norms, router, head, overhead).

    Runs under the model lock, so no request sees the experts switched off.
    """
    from transformers import DynamicCache

    blocks = moe_blocks(runtime.lm, runtime.adapter)
    with runtime.model_lock:
        cache = DynamicCache(config=runtime.hf_config)
        runtime.forward_logits(torch.tensor([prompt]), cache, keep=1)
        token = torch.tensor([[prompt[-1]]])  # [1, 1]
        for block in blocks:
            block.experts_enabled = False
        try:
            return median_seconds(
                lambda: runtime.forward_logits(token, cache, keep=1), repeats, runtime.config.device
            )
        finally:
            for block in blocks:
                block.experts_enabled = True
