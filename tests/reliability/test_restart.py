"""State kept across a restart (issue 16, case 6): an executor started again on the same state file comes
back with the plan, budgets, standing target, planner address and pins it had; a temp file left by a
killed writer is removed at start; an unreadable state file is ignored, not fatal."""

from __future__ import annotations

import subprocess
import sys

from moeqos.client import ExecutorClient
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule

from tests.service.service_harness import address

TARGET = QosTarget(objective=Objective.QUALITY)
PINS = (PlacementRule("L0.E*", Precision.INT8, "cpu"),)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_restarted_executor_restores_its_state(stack, profile_file, tmp_path):
    settings = {"state_path": tmp_path / "state.json", "variant_cache_dir": tmp_path / "variants"}
    first = stack.executor(tier_budgets={"disk": 0}, **settings)
    runtime = first.servicer.runtime
    plan = Plan.uniform(runtime.num_layers, runtime.num_experts, Precision.INT8, "cpu")
    with ExecutorClient(address(first.port)) as client:
        client.apply_plan(plan)
        cpu = next(t for t in client.info().tiers if t.name == "cpu")
        client.set_budget("cpu", cpu.budget_bytes // 2)
        client.set_target(TARGET, "127.0.0.1:1", PINS)
        before = client.info()
    orphan = runtime.factory.directory / f"L0.E0.int8.g64.{_dead_pid()}.1.tmp"
    orphan.write_bytes(b"half a variant")  # what a writer killed mid-write leaves
    second = stack.executor(tier_budgets={"disk": 0}, **settings)  # as after a SIGKILL: nothing saved at exit
    with ExecutorClient(address(second.port)) as client:
        after = client.info()
    assert after.plan == plan == before.plan
    assert {t.name: t.budget_bytes for t in after.tiers} == {t.name: t.budget_bytes for t in before.tiers}
    assert (after.standing_target, after.planner_address, after.standing_pins) == (
        TARGET,
        "127.0.0.1:1",
        PINS,
    )
    assert not orphan.exists()


def test_an_unreadable_state_file_is_ignored(stack, profile_file, tmp_path):
    state = tmp_path / "state.json"
    state.write_text('{"version": 1, "plan": ')  # cut short
    handle = stack.executor(tier_budgets={"disk": 0}, state_path=state)
    with ExecutorClient(address(handle.port)) as client:
        assert client.info().standing_target is None
        runtime = handle.servicer.runtime
        client.apply_plan(Plan.uniform(runtime.num_layers, runtime.num_experts, Precision.INT4, "cpu"))
    assert "int4" in state.read_text()  # rewritten whole on the next change
