"""The expert store: holds every expert where the plan puts it and computes it on demand.

Mechanism only: where an expert lives comes from the plan (`install`), what stays in the disk tier's
slot pool from the pool's `EvictionPolicy`. The store counts what it moves so profiles and the
service can report it. Calls happen under the runtime's model lock, so the store needs no lock of its
own for its counters beyond that.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from moeqos.core.plan import Plan
from moeqos.core.tier import DISK
from moeqos.executor.eviction import SlotPool
from moeqos.executor.moe import ExpertRunner
from moeqos.executor.quant import QuantExpert
from moeqos.executor.quant.fused import mix, routed_token
from moeqos.executor.variants import ExpertKey, VariantFactory, VariantKey, variant_key


@dataclass(frozen=True)
class StoreStats:
    """Counters since load: disk-tier pool hits/misses, bytes moved between tiers, pool occupancy."""

    hits: int
    misses: int
    bytes_moved: int
    """Bytes read from disk into slots plus bytes copied host-to-device under host_policy=copy."""
    resident_slots: int
    slots: int
    evictions: int


class ExpertStore:
    """Resident experts per (layer, expert), plus the slot pool for the `disk` tier."""

    def __init__(self, factory: VariantFactory, device: str, host_policy: str, slots: int) -> None:
        self.factory = factory
        self.device = device
        self.host_policy = host_policy
        self.pool: SlotPool[ExpertKey, QuantExpert] = SlotPool(slots)
        self.plan: Plan | None = None
        self._resident: dict[ExpertKey, QuantExpert] = {}
        self._on_device: list[list[QuantExpert | None]] = []
        """[layer][expert] -> the module of a device-tier expert, None for the others: the decode
        path's lookup (`run_token`), kept in step with `_resident` by `install` (changed keys only)."""
        self._copied_bytes = 0
        self._local = threading.local()
        """`view`: the runner of this thread's private plan while `viewing` (moeqos.executor.plan_view)."""

    @contextmanager
    def viewing(self, view: ExpertRunner) -> Iterator[None]:
        """Compute this thread's expert calls with `view` inside the block; other threads keep the plan."""
        self._local.view = view
        try:
            yield
        finally:
            del self._local.view

    def module(self, key: ExpertKey) -> QuantExpert | None:
        """The resident module of a device- or host-tier expert (None for disk-tier ones)."""
        return self._resident.get(key)

    def variant(self, key: ExpertKey) -> VariantKey:
        assert self.plan is not None, "no plan installed"
        return variant_key(self.plan, key)

    def run(self, layer: int, expert: int, x: torch.Tensor) -> torch.Tensor:
        """y [N, H] = expert(x [N, H]) on whichever processor the expert's tier and policy say."""
        view = getattr(self._local, "view", None)
        if view is not None:
            return view.run(layer, expert, x)
        assert self.plan is not None, "no plan installed"
        key = (layer, expert)
        tier = self.plan[key].tier
        if tier == DISK:
            variant = self.variant(key)
            module = self.pool.get(key, lambda: self.factory.load(variant, self.device))
            return module(x)
        module = self._resident[key]
        if tier != self.device and self.host_policy != "compute":
            self._copied_bytes += module.nbytes()
        return compute_on_tier(module, tier, self.device, self.host_policy, x)

    def run_token(
        self, layer: int, experts: list[int], x: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """sum_k weights[0, k] * expert_k(x) [1, H] for one token x [1, H]: computed together
        (`routed_token`) when all K experts are on the device tier, else one `run` each."""
        view = getattr(self._local, "view", None)
        if view is not None:
            return view.run_token(layer, experts, x, weights)
        row = self._on_device[layer]
        modules = [row[expert] for expert in experts]
        if None in modules:
            return mix([self.run(layer, expert, x) for expert in experts], weights)
        return routed_token(modules, x, weights)  # type: ignore[arg-type]  # no None, checked above

    def viewed(self) -> bool:
        """True while this thread computes with a private plan view (`viewing`)."""
        return getattr(self._local, "view", None) is not None

    def device_experts(self, layer: int, experts: list[int]) -> list[QuantExpert] | None:
        """The modules of `experts` when all are on the device tier (None for any other, or for this
        thread's private view, whose experts `run_token` computes)."""
        view = getattr(self._local, "view", None)
        if view is not None:
            return view.device_experts(layer, experts)
        row = self._on_device[layer]
        modules = [row[expert] for expert in experts]
        return None if None in modules else modules  # type: ignore[return-value]  # no None, checked

    def install(
        self, plan: Plan, built: dict[ExpertKey, QuantExpert]
    ) -> list[tuple[VariantKey, QuantExpert]]:
        """Switch to `plan` with freshly `built` modules for its changed resident experts.

        Returns the (variant, module) pairs the plan no longer uses, for the caller to retire.
        """
        previous = self.plan
        changed = [key for key, _ in plan.items()] if previous is None else plan.changed_experts(previous)
        retired: list[tuple[VariantKey, QuantExpert]] = []
        for key in changed:
            self.pool.discard(key)
            old = self._resident.pop(key, None)
            if old is not None and previous is not None:
                retired.append((variant_key(previous, key), old))
        self._resident.update(built)
        if not self._on_device:
            self._on_device = [[None] * len(row) for row in plan.assignments]
        for layer, expert in changed:
            on_device = plan[(layer, expert)].tier == self.device
            self._on_device[layer][expert] = self._resident[(layer, expert)] if on_device else None
        self.plan = plan
        return retired

    def stats(self) -> StoreStats:
        pool = self.pool.stats
        return StoreStats(
            hits=pool.hits,
            misses=pool.misses,
            bytes_moved=pool.bytes_loaded + self._copied_bytes,
            resident_slots=len(self.pool),
            slots=self.pool.slots,
            evictions=pool.evictions,
        )


def compute_on_tier(
    module: QuantExpert, tier: str, device: str, host_policy: str, x: torch.Tensor
) -> torch.Tensor:
    """y [N, H] = module(x [N, H]) for an expert resident on `tier`: on the device, on the host
    (host_policy `compute`), or copied to the device for the call (`copy`)."""
    if tier == device:
        return module(x)
    if host_policy == "compute":
        return module(x.to(tier)).to(x.device)  # [N, H] computed on the host
    return module.to_device(device)(x)
