"""Tier budgets and plan validation against one executor: shape, tiers, group size, bytes.

Pure checks over plain values, so `validate_plan` can run before anything is built and the running
plan is untouched when it raises.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from moeqos.core.errors import InvalidArgument, OverBudget
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision, expert_bytes
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


def validate_plan(
    plan: Plan,
    shape: tuple[int, int],
    hidden_intermediate: tuple[int, int],
    budgets: Mapping[str, int],
) -> dict[str, int]:
    """Raise InvalidArgument/OverBudget unless `plan` can run here; returns bytes per tier."""
    try:
        plan.check_shape(*shape)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc
    unknown = sorted(plan.tiers() - set(budgets))
    if unknown:
        raise InvalidArgument(f"plan uses tiers {unknown} this executor lacks; it has {sorted(budgets)}")
    hidden, intermediate = hidden_intermediate
    grouped = any(a.precision.is_grouped for a in plan.counts())
    if grouped and (hidden % plan.group_size or intermediate % plan.group_size):
        raise InvalidArgument(
            f"group_size {plan.group_size} must divide hidden {hidden} and intermediate {intermediate}"
        )
    used = plan.bytes_per_tier(bytes_table(hidden, intermediate, plan.group_size))
    over = {tier: (n, budgets[tier]) for tier, n in used.items() if n > budgets[tier]}
    if over:
        detail = ", ".join(f"{tier} needs {n} B of {budget} B" for tier, (n, budget) in over.items())
        raise OverBudget(f"plan does not fit the tier budgets: {detail}")
    return used
