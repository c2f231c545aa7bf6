"""The executor's decisions, kept across restarts: the plan, the tier budgets, the standing target with
its planner address and pins.

Saved after every change (ApplyPlan, SetBudget, SetTarget, a re-plan that applied) as one JSON file,
written atomically (temp file, fsync, rename), so a kill at any moment leaves the previous state or
the new one, never half of either. Read once at start: a state saved for another model (fingerprint)
or one that does not parse is ignored with a warning, and the executor starts from its configuration.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moeqos.core.plan import Plan
from moeqos.core.qos import QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.executor.processes import process_alive

log = logging.getLogger(__name__)

VERSION = 1


@dataclass(frozen=True)
class ExecutorState:
    """What a restart restores."""

    model_fingerprint: str
    plan: Plan
    budgets: dict[str, int]
    target: QosTarget | None
    planner_address: str
    pins: tuple[PlacementRule, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "model_fingerprint": self.model_fingerprint,
            "plan": self.plan.to_dict(),
            "budgets": dict(self.budgets),
            "target": None if self.target is None else self.target.to_dict(),
            "planner_address": self.planner_address,
            "pins": [str(rule) for rule in self.pins],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutorState:
        if data.get("version") != VERSION:
            raise ValueError(f"state version {data.get('version')!r}, expected {VERSION}")
        target = data["target"]
        return cls(
            model_fingerprint=str(data["model_fingerprint"]),
            plan=Plan.from_dict(data["plan"]),
            budgets={str(tier): int(n) for tier, n in data["budgets"].items()},
            target=None if target is None else QosTarget.from_dict(target),
            planner_address=str(data["planner_address"]),
            pins=tuple(PlacementRule.parse(rule) for rule in data["pins"]),
        )


def save_state(path: Path, state: ExecutorState) -> None:
    """Write `state` to `path` atomically (the old file stays whole until the new one is complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as out:
        json.dump(state.to_dict(), out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def load_state(path: Path, model_fingerprint: str) -> ExecutorState | None:
    """The state saved at `path` for this model, or None (none saved, another model's, unreadable)."""
    remove_orphan_temp_files(path.parent, f"{path.name}.")
    if not path.is_file():
        return None
    try:
        state = ExecutorState.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the saved executor state %s: %s", path.name, exc)
        return None
    if state.model_fingerprint != model_fingerprint:
        log.warning("ignoring the saved executor state %s: it is another model's", path.name)
        return None
    return state


def remove_orphan_temp_files(directory: Path, prefix: str = "") -> int:
    """Remove `prefix*.PID[.TID].tmp` files in `directory` left by processes that no longer run (a
    live process's may be mid-write); returns how many were removed."""
    removed = 0
    if not directory.is_dir():
        return removed
    for path in directory.glob(f"{prefix}*.tmp"):
        if _writer_alive(path):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def _writer_alive(path: Path) -> bool:
    """Whether the process named in the temp file's name still runs (files named otherwise: no)."""
    parts = path.name.split(".")
    pids = [int(p) for p in parts[-3:-1] if p.isdigit()]
    if not pids or pids[0] == os.getpid():
        return bool(pids)  # our own temp files are mid-write; unnamed ones are nobody's
    return process_alive(pids[0])
