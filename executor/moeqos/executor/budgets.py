"""Tier budgets and plan validation against one executor: shape, tiers, group size, bytes.

Pure functions over plain values: `plan_bytes` computes what a plan needs per tier, `check_plan` and
`validate_plan` check it, so validation runs before anything is built and the running plan is
untouched when it raises.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from moeqos.core.dense import DenseCharge
from moeqos.core.errors import InvalidArgument, OverBudget
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision, expert_bytes, groups_fit
from moeqos.core.tier import DISK


def physical_budget(tier: str, disk_dir: Path) -> int:
    """The whole memory of a tier, the default budget when none is configured."""
    if tier == DISK:
        disk_dir.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(disk_dir).free
    if tier == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if tier.startswith("cuda"):
        return int(torch.cuda.get_device_properties(torch.device(tier)).total_memory)
    raise InvalidArgument(f"no default budget for tier {tier!r}; configure one")


def bytes_table(hidden: int, intermediate: int, group_size: int) -> dict[Precision, int]:
    """Bytes of one expert per precision (moeqos.core.precision is the single source of truth)."""
    return {p: expert_bytes(hidden, intermediate, p, group_size) for p in Precision}


def plan_bytes(
    plan: Plan, hidden_intermediate: tuple[int, int], dense: DenseCharge | None = None
) -> dict[str, int]:
    """Bytes of expert weights `plan` puts on each tier it uses, plus (given `dense`) what its dense part
    holds beyond the dense precision's on the device tier (a pure calculation, no checks)."""
    hidden, intermediate = hidden_intermediate
    used = plan.bytes_per_tier(bytes_table(hidden, intermediate, plan.group_size))
    if dense is not None:
        for tier, delta in dense.bytes_per_tier(plan.dense, plan.group_size).items():
            used[tier] = used.get(tier, 0) + delta
    return used


def check_plan(
    plan: Plan, shape: tuple[int, int], hidden_intermediate: tuple[int, int], tiers: Collection[str]
) -> None:
    """InvalidArgument unless `plan` has `shape` (layers, experts), uses only `tiers`, and its group
    size divides the expert dimensions (when a precision is grouped)."""
    try:
        plan.check_shape(*shape)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc
    unknown = sorted(plan.tiers() - set(tiers))
    if unknown:
        raise InvalidArgument(f"plan uses tiers {unknown} this executor lacks; it has {sorted(tiers)}")
    hidden, intermediate = hidden_intermediate
    # The plan's group size must divide the expert dimensions; a precision naming its own group
    # (int4g128 on hidden 576) may leave a short last group per row, computed by the dequantize fallback.
    bare = any(a.precision.is_grouped and a.precision.group_size is None for a in plan.counts())
    if bare and not groups_fit(Precision.INT4, hidden, intermediate, plan.group_size):
        raise InvalidArgument(
            f"group_size {plan.group_size} must divide hidden {hidden} and intermediate {intermediate}"
        )


def validate_plan(
    plan: Plan,
    shape: tuple[int, int],
    hidden_intermediate: tuple[int, int],
    budgets: Mapping[str, int],
    dense: DenseCharge | None = None,
) -> None:
    """Raise InvalidArgument (see check_plan) or OverBudget unless `plan` can run here (its dense part
    charged as `dense` says)."""
    check_plan(plan, shape, hidden_intermediate, budgets)
    used = plan_bytes(plan, hidden_intermediate, dense)
    over = {tier: (n, budgets[tier]) for tier, n in used.items() if n > budgets[tier]}
    if over:
        detail = ", ".join(f"{tier} needs {n} B of {budget} B" for tier, (n, budget) in over.items())
        raise OverBudget(f"plan does not fit the tier budgets: {detail}")


def check_budget(tier: str, budget_bytes: int, budgets: Mapping[str, int]) -> None:
    """InvalidArgument unless `tier` is one of `budgets` and `budget_bytes` a non-negative integer."""
    if tier not in budgets:
        raise InvalidArgument(f"unknown tier {tier!r}; this executor has {sorted(budgets)}")
    if not isinstance(budget_bytes, int) or budget_bytes < 0:
        raise InvalidArgument(f"budget must be a non-negative integer, got {budget_bytes!r}")


def default_plan(
    shape: tuple[int, int], hidden_intermediate: tuple[int, int], device: str, budgets: Mapping[str, int]
) -> Plan:
    """Uniform bf16 on `device` if it fits the budgets, else uniform int4 (whether or not that fits:
    applying it then says what is over budget)."""
    for precision in (Precision.BF16, Precision.INT4):
        plan = Plan.uniform(*shape, precision, device)
        try:
            validate_plan(plan, shape, hidden_intermediate, budgets)
        except OverBudget:
            continue
        return plan
    return plan
