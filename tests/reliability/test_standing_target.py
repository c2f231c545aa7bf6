"""Standing targets carry a generation (issue 16, case 5): a re-plan started for an older target or
planner address never applies over a newer Deploy, even when its planner answers again later; and a
Deploy's pins survive the re-plans a budget change starts."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from moeqos.api.channel import ConnectOptions
from moeqos.client import DeploySpec, ExecutorClient, PlannerClient
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.service_types import ReplanState
from moeqos.executor.service_target import StandingTarget, Superseded

from tests.service.service_harness import address

SPEED = QosTarget(objective=Objective.SPEED)
EVERY_EXPERT_INT8 = (PlacementRule("*", Precision.INT8, "cpu"),)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _all_int8(info) -> bool:
    return all(a.precision == Precision.INT8 for _, a in info.plan.items())


def test_a_stale_replan_never_overwrites_a_newer_deploy(stack, profile_file):
    handle = stack.executor(tier_budgets={"disk": 0}, replan_backoff=(0.2, 0.5))
    old_port = _free_port()  # the old planner's address: nothing listens there yet
    with ExecutorClient(address(handle.port)) as executor:
        executor.set_target(SPEED, address(old_port))
        cpu = next(t for t in executor.info().tiers if t.name == "cpu")
        executor.set_budget("cpu", cpu.budget_bytes - 1)  # starts a re-plan through the old address
        _wait(lambda: executor.info().replan_state == ReplanState.RETRYING, "the re-plan to retry")
        new = stack.planner()
        with PlannerClient(address(new.port)) as planner:
            planner.deploy([DeploySpec(address(handle.port), SPEED, pins=EVERY_EXPERT_INT8)])
        deployed = executor.info()
        assert _all_int8(deployed) and deployed.standing_pins == EVERY_EXPERT_INT8
        stack.planner(listen=address(old_port))  # the old planner answers again
        time.sleep(3.0)  # several of the old loop's retry periods
        after = executor.info()
        assert after.plan == deployed.plan and after.planner_address == address(new.port)
        assert after.target_generation == deployed.target_generation


def test_pins_survive_a_budget_change(stack, profile_file):
    handle = stack.executor(tier_budgets={"disk": 0})
    planner = stack.planner()
    with ExecutorClient(address(handle.port)) as executor, PlannerClient(address(planner.port)) as client:
        client.deploy([DeploySpec(address(handle.port), SPEED, pins=EVERY_EXPERT_INT8)])
        assert _all_int8(executor.info())
        cpu = next(t for t in executor.info().tiers if t.name == "cpu")
        assert executor.set_budget("cpu", cpu.budget_bytes - 1).replan_started
        _wait(lambda: executor.info().replan_state == ReplanState.APPLIED, "the re-plan")
        assert _all_int8(executor.info())  # the re-plan kept the Deploy's pins


def test_a_replan_superseded_during_its_switch_does_not_apply():
    """Cancelling a re-plan cannot stop a switch already on a worker thread; its generation check,
    made under the apply lock, does."""
    started, release, applied = threading.Event(), threading.Event(), []

    class Hooks:  # a moeqos.executor.service_target.ReplanHooks whose switch waits for `release`
        async def cached_profile(self) -> None:
            raise AssertionError("the plan is given, no profile is needed")

        def budgets(self) -> tuple[()]:
            return ()

        async def apply(self, plan: Plan, current=None) -> None:
            def switch() -> None:
                started.set()
                release.wait(10)  # waiting for the apply lock, say
                if not current():
                    raise Superseded("a newer target came first")
                applied.append(plan)

            await asyncio.get_running_loop().run_in_executor(None, switch)

    async def scenario() -> None:
        target = StandingTarget("127.0.0.1:1", ConnectOptions(), Hooks())  # type: ignore[arg-type]
        plan = Plan.uniform(2, 4, Precision.INT4, "cpu")

        async def planned(*args: object) -> Plan:
            return plan

        target._plan_once = planned  # type: ignore[method-assign]
        target.set(SPEED, "127.0.0.1:1")
        assert target.replan()
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        target.set(SPEED, "127.0.0.1:2")  # a newer Deploy's SetTarget
        release.set()
        await asyncio.sleep(0.5)

    asyncio.run(scenario())
    assert applied == []
