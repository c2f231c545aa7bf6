"""The executor's state file on its own (moeqos.executor.state_store): what load_state refuses and which
temp files a start removes. The restart itself over real gRPC is tests/reliability/test_restart.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.executor.state_store import ExecutorState, load_state, remove_orphan_temp_files, save_state

STATE = ExecutorState(
    model_fingerprint="model-a",
    plan=Plan.uniform(2, 4, Precision.INT8, "cpu"),
    budgets={"cpu": 1 << 20, "disk": 0},
    target=QosTarget(objective=Objective.QUALITY),
    planner_address="127.0.0.1:7000",
    pins=(PlacementRule("L0.E*", Precision.INT4, "cpu"),),
)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_saved_state_loads_back_equal(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, STATE)
    assert load_state(path, "model-a") == STATE
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind


def test_another_models_state_is_ignored(tmp_path: Path, caplog) -> None:
    path = tmp_path / "state.json"
    save_state(path, STATE)
    assert load_state(path, "model-b") is None
    assert "another model" in caplog.text


def test_a_state_of_another_version_is_ignored(tmp_path: Path, caplog) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({**STATE.to_dict(), "version": 99}))
    assert load_state(path, "model-a") is None
    assert "version 99" in caplog.text


def test_no_state_file_means_no_state(tmp_path: Path) -> None:
    assert load_state(tmp_path / "missing.json", "model-a") is None


def test_only_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"state.json.{_dead_pid()}.tmp"
    live = tmp_path / f"state.json.{os.getppid()}.tmp"  # the test runner's parent: alive, mid-write
    own = tmp_path / f"state.json.{os.getpid()}.tmp"  # this process's own writer
    unnamed = tmp_path / "state.json.partial.tmp"  # no pid in its name: nobody's
    other = tmp_path / "variant.bin"  # not a temp file at all
    for path in (dead, live, own, unnamed, other):
        path.write_text("x")
    assert remove_orphan_temp_files(tmp_path, "state.json.") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, own.name, other.name])
