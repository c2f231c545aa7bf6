"""The standing QoS target: when a tier's budget changes, ask the planner for a plan that meets the
target under the new budgets and apply it, in the background, retrying with exponential backoff
while the planner is unreachable. The planner stays stateless: each request carries the profile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from moeqos.api.channel import ConnectOptions
from moeqos.client.planner import AsyncPlannerClient
from moeqos.core.errors import MoeqosError, Unavailable
from moeqos.core.plan import Plan
from moeqos.core.profile import Profile
from moeqos.core.qos import QosTarget
from moeqos.core.service_types import ReplanState
from moeqos.core.tier import TierBudget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplanHooks:
    """What a re-plan needs from the executor (all awaitables, run off the event loop by the caller)."""

    profile: Callable[[], Awaitable[Profile]]
    budgets: Callable[[], tuple[TierBudget, ...]]
    apply: Callable[[Plan], Awaitable[object]]
    planning_target: Callable[[QosTarget], QosTarget] = lambda target: target
    """The target the planner is asked for (the QoS loop adds headroom to the floor)."""


class StandingTarget:
    """Holds the target and planner address; `replan()` starts (or restarts) a background re-plan."""

    def __init__(
        self,
        planner_address: str,
        peer: ConnectOptions,
        hooks: ReplanHooks,
        backoff: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self.target: QosTarget | None = None
        self.planner_address = planner_address
        self.state = ReplanState.IDLE
        """Where the last re-plan stands, for GetInfo."""
        self.detail = ""
        """For people: the plan applied (APPLIED) or the error (RETRYING, FAILED); empty otherwise."""
        self._peer = peer
        self._hooks = hooks
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None

    def set(self, target: QosTarget | None, planner_address: str) -> None:
        """Hold `target` (None clears it); a non-empty address replaces the planner to ask."""
        self.target = target
        if planner_address:
            self.planner_address = planner_address
        if target is None:
            self.cancel()

    def replan(self) -> bool:
        """Start re-planning against the target; False when there is no target or no planner to ask."""
        if self.target is None or not self.planner_address:
            return False
        self.cancel()
        self._set(ReplanState.REPLANNING)
        self._task = asyncio.get_running_loop().create_task(self._run(self.target, self.planner_address))
        return True

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def wait(self) -> None:
        """Wait for the re-plan in progress, if any (for shutdown and tests)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, target: QosTarget, address: str) -> None:
        delay, ceiling = self._backoff
        while True:
            try:
                plan = await self._plan_once(target, address)
                await self._hooks.apply(plan)
                self._set(ReplanState.APPLIED, plan.to_spec())
                return
            except Unavailable as exc:
                self._set(ReplanState.RETRYING, f"{type(exc).__name__}: {exc} (next try in {delay:.1f}s)")
                log.warning("planner %s unreachable (%s); retrying in %.1fs", address, exc, delay)
            except MoeqosError as exc:
                self._set(ReplanState.FAILED, f"{type(exc).__name__}: {exc}")
                log.error("re-plan against %s failed: %s", target.describe(), exc)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, ceiling)

    def _set(self, state: ReplanState, detail: str = "") -> None:
        self.state, self.detail = state, detail

    async def _plan_once(self, target: QosTarget, address: str) -> Plan:
        profile = await self._hooks.profile()
        async with AsyncPlannerClient(address, self._peer) as planner:
            outcome = await planner.plan(
                self._hooks.planning_target(target), profile=profile, budgets=self._hooks.budgets()
            )
        return outcome.plan
