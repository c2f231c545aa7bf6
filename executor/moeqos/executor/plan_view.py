"""A plan seen by one thread only: how `Evaluate` measures a plan without serving it to anyone.

`private_view(runtime, plan)` builds the experts `plan` assigns differently from the serving plan (its
own copies, from the variant caches or the checkpoint), shares the serving plan's modules for the
rest, and installs the view on the calling thread through `ExpertStore.viewing`. Forward passes from
that thread compute with the view (its dense part too: moeqos.executor.dense_part); every other request
keeps the serving plan, and a plan switch meanwhile changes neither. The copies go back to the variant factory's memory cache afterwards.

Disk-tier experts of the viewed plan are read from their files on each use (no slot pool). What the
view adds counts against the tier budgets beside the serving plan: the files it must write against
the disk budget, its own copies of experts against their memory tier's budget. Refused (OverBudget)
before anything is built when either would not fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from moeqos.core.errors import OverBudget
from moeqos.core.plan import Plan
from moeqos.core.tier import DISK
from moeqos.executor.budgets import bytes_table, plan_bytes
from moeqos.executor.host_memory import release_freed_memory
from moeqos.executor.quant import QuantExpert
from moeqos.executor.quant.fused import mix
from moeqos.executor.store import compute_on_tier
from moeqos.executor.variants import ExpertKey, VariantFactory, variant_key

if TYPE_CHECKING:
    from moeqos.executor.runtime import ExecutorRuntime


class PlanView:
    """An `ExpertRunner` for one fixed plan: resident modules per expert, disk experts read per use."""

    def __init__(
        self,
        plan: Plan,
        modules: dict[ExpertKey, QuantExpert],
        factory: VariantFactory,
        device: str,
        host_policy: str,
    ) -> None:
        self.plan = plan
        self.modules = modules
        self.factory = factory
        self.device = device
        self.host_policy = host_policy

    def run(self, layer: int, expert: int, x: torch.Tensor) -> torch.Tensor:
        """y [N, H] = expert(x [N, H]) as the viewed plan places it."""
        key = (layer, expert)
        tier = self.plan[key].tier
        if tier == DISK:
            module = self.factory.load(variant_key(self.plan, key), self.device)[0]
            return module(x)
        return compute_on_tier(self.modules[key], tier, self.device, self.host_policy, x)

    def run_token(
        self, layer: int, experts: list[int], x: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """One token's routed experts [1, H], one `run` each (a view measures; it is not the hot path)."""
        return mix([self.run(layer, expert, x) for expert in experts], weights)

    def device_experts(self, layer: int, experts: list[int]) -> list[QuantExpert] | None:
        """The viewed plan's modules of `experts` when all are on the device tier, else None."""
        keys = [(layer, expert) for expert in experts]
        if any(self.plan[key].tier != self.device for key in keys):
            return None
        return [self.modules[key] for key in keys]


@contextmanager
def private_view(runtime: ExecutorRuntime, plan: Plan) -> Iterator[None]:
    """Serve `plan` to the calling thread only, inside the block (see the module docstring)."""
    runtime.validate_plan(plan)
    factory, store = runtime.factory, runtime.store
    with runtime.exclusive():  # a consistent snapshot of the serving plan and its modules
        serving = runtime.plan
        shared = {key: store.module(key) for key, _ in plan.items() if _same(serving, plan, key)}
    check_room_beside(runtime, plan, serving, [key for key, _ in plan.items() if shared.get(key) is None])
    disk = [variant_key(plan, key) for key, a in plan.items() if a.tier == DISK]
    factory.check_room(disk, runtime.config.device)  # the filesystem, as it is now
    built: dict[ExpertKey, QuantExpert] = {}
    try:
        for key, assignment in plan.items():
            if assignment.tier == DISK:
                factory.ensure_file(variant_key(plan, key), runtime.config.device)
            elif shared.get(key) is None:
                built[key] = factory.build(variant_key(plan, key), assignment.tier)
        modules = {key: module for key, module in shared.items() if module is not None} | built
        view = PlanView(plan, modules, factory, runtime.config.device, runtime.config.host_policy)
        with store.viewing(view), runtime.dense.viewing(plan):
            yield
    finally:
        for key, module in built.items():
            factory.retire(variant_key(plan, key), module)
        built.clear()
        release_freed_memory()


def _same(serving: Plan, plan: Plan, key: ExpertKey) -> bool:
    return serving[key] == plan[key] and serving.group_size == plan.group_size


def check_room_beside(runtime: ExecutorRuntime, plan: Plan, serving: Plan, own: list[ExpertKey]) -> None:
    """OverBudget when what `plan` adds on a tier does not fit in its budget beside the serving plan:
    disk files it must write (`own` experts whose file is missing), memory copies it must build
    (`own` experts on a memory tier)."""
    sizes = bytes_table(*runtime.shape, plan.group_size)
    exists = runtime.factory.path
    added: dict[str, int] = {}
    for key in own:
        assignment = plan[key]
        if assignment.tier == DISK and exists(variant_key(plan, key)).is_file():
            continue  # read from its existing file: nothing written, nothing resident
        added[assignment.tier] = added.get(assignment.tier, 0) + sizes[assignment.precision]
    used = plan_bytes(serving, runtime.shape)
    for tier, needed in added.items():
        budget = runtime.budgets.get(tier)
        in_use = used.get(tier, 0)
        if budget is not None and in_use + needed > budget:
            what = "writes disk-tier files of" if tier == DISK else f"builds {tier} copies of experts of"
            raise OverBudget(
                f"computing this plan beside the serving one {what} {needed} bytes; the {tier} "
                f"budget {budget} has {max(0, budget - in_use)} left beside the serving plan's {in_use}"
            )
