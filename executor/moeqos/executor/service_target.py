"""The standing QoS target: when a tier's budget changes, ask the planner for a plan that meets the
target under the new budgets and apply it, in the background, retrying with exponential backoff
while the planner is unreachable. The planner stays stateless: each request carries the profile and
the target's pin rules (a Deploy's pins survive every later re-plan).

Every decision counts in `generation`: SetTarget, an explicit ApplyPlan (`supersede`) and each new
re-plan. A re-plan remembers the generation it started under and applies its plan only if it is still
the current one, checked under the runtime's apply lock (`ReplanHooks.apply`), so a retry loop for an
older target or planner address can never install its plan over a newer Deploy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from moeqos.api.channel import ConnectOptions
from moeqos.client.planner import AsyncPlannerClient
from moeqos.core.errors import InfeasibleTarget, MoeqosError, Unavailable
from moeqos.core.plan import Plan
from moeqos.core.profile import Profile
from moeqos.core.qos import QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.service_types import ReplanState
from moeqos.core.tier import TierBudget

log = logging.getLogger(__name__)


class ReplanHooks(Protocol):
    """What a re-plan needs from the executor (moeqos.executor.service_model.ServedModel has it)."""

    async def cached_profile(self) -> Profile:
        """The executor's profile, its tiers at the current budgets."""
        ...

    def budgets(self) -> tuple[TierBudget, ...]:
        """Every tier's budget now."""
        ...

    async def apply(self, plan: Plan, current: Callable[[], bool] | None = None) -> object:
        """Serve `plan` (the torch work off the event loop); with `current`, only if it still says True
        when checked under the runtime's apply lock, else raise Superseded."""
        ...


class Superseded(Exception):
    """A newer SetTarget, ApplyPlan or re-plan came after this re-plan started: it must not apply."""


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
        self.pins: tuple[PlacementRule, ...] = ()
        """Pin rules every re-plan keeps (a Deploy's)."""
        self.planner_address = planner_address
        self.generation = 0
        """Counts decisions (see the module docstring); read from worker threads, written on the loop."""
        self.state = ReplanState.IDLE
        """Where the last re-plan stands, for GetInfo."""
        self.detail = ""
        """For people: the plan applied (APPLIED) or the error (RETRYING, FAILED); empty otherwise."""
        self._peer = peer
        self._hooks = hooks
        self._backoff = backoff
        self.planning_target: Callable[[QosTarget], QosTarget] = lambda target: target
        """The target the planner is asked for (the QoS loop adds headroom to the floor)."""
        self.planning_fallbacks: Callable[[QosTarget], Sequence[QosTarget]] = lambda target: ()
        """Targets asked for next, in turn and at once, while the planner finds no plan for the one
        before (the QoS loop's fallback stages); the last one's failure is the re-plan's."""
        self.rung = 0
        """Which target the last plan applied was found for: 0 the planning target, i the i-th fallback."""
        self.planning_profile: Callable[[Profile], Profile] = lambda profile: profile
        """The profile the planner plans from (the QoS loop's live calibration of the measured one)."""
        self.planning_refusal: Callable[[Plan], str | None] = lambda plan: None
        """Why a plan the planner found must not apply (None: it may): the QoS loop turns down a
        violation's plan predicted slower than the plan in force. A plan turned down counts as none
        found for its target."""
        self._task: asyncio.Task[None] | None = None

    def set(
        self, target: QosTarget | None, planner_address: str, pins: tuple[PlacementRule, ...] = ()
    ) -> None:
        """Hold `target` (None clears it) and the pins its re-plans keep; a non-empty address replaces
        the planner to ask. A re-plan in progress is cancelled and can no longer apply."""
        self.supersede()
        self.target = target
        self.pins = pins if target is not None else ()
        if planner_address:
            self.planner_address = planner_address

    def supersede(self) -> None:
        """A newer decision was taken (SetTarget, an explicit ApplyPlan): stop any re-plan in progress."""
        self.generation += 1
        if self._task is not None and not self._task.done():
            self._set(ReplanState.IDLE)
        self.cancel()

    def replan(self) -> bool:
        """Start re-planning against the target; False when there is no target or no planner to ask."""
        if self.target is None or not self.planner_address:
            return False
        self.supersede()
        self._set(ReplanState.REPLANNING)
        run = self._run(self.target, self.planner_address, self.pins, self.generation)
        self._task = asyncio.get_running_loop().create_task(run)
        return True

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def wait(self) -> None:
        """Wait for the re-plan in progress, if any (for shutdown and tests)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(
        self, target: QosTarget, address: str, pins: tuple[PlacementRule, ...], generation: int
    ) -> None:
        delay, ceiling = self._backoff
        while True:
            try:
                plan = await self._plan_once(target, address, pins)
                await self._hooks.apply(plan, lambda: self.generation == generation)
                self._set(ReplanState.APPLIED, plan.to_spec())
                return
            except Superseded:
                log.info("a re-plan against %s was superseded before it applied", target.describe())
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

    async def _plan_once(self, target: QosTarget, address: str, pins: tuple[PlacementRule, ...]) -> Plan:
        profile = self.planning_profile(await self._hooks.cached_profile())
        asks = (self.planning_target(target), *self.planning_fallbacks(target))
        budgets = self._hooks.budgets()
        async with AsyncPlannerClient(address, self._peer) as planner:
            for rung, asked in enumerate(asks[:-1]):
                try:
                    plan = await self._accepted(planner, asked, profile, budgets, pins)
                except InfeasibleTarget as exc:
                    log.info("%s; asking for the next fallback", exc)
                    continue
                self.rung = rung
                return plan
            plan = await self._accepted(planner, asks[-1], profile, budgets, pins)
        self.rung = len(asks) - 1
        return plan

    async def _accepted(
        self,
        planner: AsyncPlannerClient,
        asked: QosTarget,
        profile: Profile,
        budgets: tuple[TierBudget, ...],
        pins: tuple[PlacementRule, ...],
    ) -> Plan:
        """The planner's plan for `asked`; InfeasibleTarget when it finds none or `planning_refusal`
        turns it down."""
        outcome = await planner.plan(asked, profile=profile, budgets=budgets, pins=pins)
        refusal = self.planning_refusal(outcome.plan)
        if refusal is not None:
            raise InfeasibleTarget(f"for {asked.describe()}: {refusal}")
        return outcome.plan
