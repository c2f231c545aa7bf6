"""The executor service's state beside its RPCs: the runtime once it is loaded, the threads every torch
call runs on (moeqos.executor.torch_threads), and the profile, measured (or read back) once and cached.

Lifecycle: made empty when the server starts (every use raises NotReady), `attach(runtime)` once the
model is loaded, `close()` at shutdown. The servicer answers RPCs over it, and the standing target
re-plans through it (it is the target's moeqos.executor.service_target.ReplanHooks), so the servicer
and the target are both built after it and neither needs the other.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from moeqos.core.errors import NotReady
from moeqos.core.plan import Plan
from moeqos.core.profile import Profile
from moeqos.core.service_types import SwitchReport
from moeqos.core.tier import TierBudget
from moeqos.executor import service_measure
from moeqos.executor.metrics import ExecutorMetrics
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.service_target import Superseded

T = TypeVar("T")


class ServedModel:
    """One runtime (attached once loaded) with its threads and its cached profile."""

    def __init__(
        self,
        pool: Executor,
        measure: service_measure.MeasureSettings,
        profile_path: Path | None,
        metrics: ExecutorMetrics,
        decoding: Executor | None = None,
    ) -> None:
        """`pool` runs work off the decode path (plan switches, evaluations, tidying up); `decoding`
        (default: `pool`) runs decode steps and profile measurements, which must be timed as served."""
        self.runtime: ExecutorRuntime | None = None
        self.measure = measure
        """What a profile measurement covers."""
        self.profile_path = profile_path
        """Where the profile is saved after each measurement and read back at the first need."""
        self.metrics = metrics
        """Where generations and plan switches are counted."""
        self.on_switch: Callable[[], None] = lambda: None
        """Called after each plan switch `apply` makes (the server saves the executor's state there)."""
        self.on_profile: Callable[[Profile], None] = lambda profile: None
        """Called whenever the cached profile is set (the server builds its variants ahead there)."""
        self.last_switch: SwitchReport | None = None
        """The last switch `apply` made (for GetInfo)."""
        self._pool = pool
        self._decoding = decoding or pool
        self._profile: Profile | None = None
        self._profile_lock = asyncio.Lock()

    def attach(self, runtime: ExecutorRuntime) -> None:
        """Serve `runtime` from now on (once, when the model has loaded)."""
        self.runtime = runtime

    def close(self) -> None:
        """Close the runtime, if one was attached (removes its private variant directory)."""
        if self.runtime is not None:
            self.runtime.close()

    def ready(self) -> ExecutorRuntime:
        """The runtime; NotReady while the model is still loading."""
        if self.runtime is None:
            raise NotReady("the executor is still loading its model")
        return self.runtime

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` off the event loop and off the decode path (a plan switch, an evaluation), at the
        thread count the decode steps use (`_at_knob`)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._at_knob(fn), *args)

    async def decode(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the decode thread: a generation's steps, and a profile, which must time
        steps as they run."""
        return await asyncio.get_running_loop().run_in_executor(self._decoding, fn, *args)

    def run_soon(self, fn: Callable[[], object]) -> None:
        """`fn()` on the worker pool, not waited for (tidying up after a call that has ended)."""
        self._pool.submit(self._at_knob(fn))

    def _at_knob(self, fn: Callable[..., T]) -> Callable[..., T]:
        """`fn` run at the runtime's thread knob: torch keeps its count per OS thread, and a call's new
        thread starts at torch's own (measured: beside a one-core neighbour, with the decode steps at
        one thread, a 210-expert plan switch at 2 took 11.5 s; quiet switches take 0.01-0.09 s)."""

        def at_knob(*args: Any) -> T:
            if self.runtime is not None:
                self.runtime.threads.apply()
            return fn(*args)

        return at_knob

    @property
    def profile_cached(self) -> bool:
        return self._profile is not None

    @property
    def measured_profile(self) -> Profile | None:
        """The profile as measured, once cached (None before; its tiers as when it was measured)."""
        return self._profile

    async def warm_profile(self, measure: bool) -> None:
        """Before health turns SERVING: read the saved profile if there is one, and with `measure`
        measure it when there is none, so a first Plan or Deploy does not wait behind a healthy status."""
        if measure:
            await self.cached_profile()
            return
        async with self._profile_lock:
            if self._profile is None:
                self._keep(service_measure.load_saved(self.profile_path, self.ready()))

    async def cached_profile(self) -> Profile:
        """The profile, measured (with reference perplexities) on first use and cached, its `tiers`
        refreshed to the current budgets (they may have changed since it was measured)."""
        async with self._profile_lock:
            profile = self._profile
            if profile is None:
                runtime = self.ready()
                profile = service_measure.load_saved(self.profile_path, runtime)
                if profile is None:
                    profile = await self.decode(service_measure.measure, runtime, self.measure, True, _quiet)
                    service_measure.save(self.profile_path, profile)
                self._keep(profile)
            return dataclasses.replace(profile, tiers=self.budgets())

    async def replace_profile(self, fresh: Profile) -> Profile:
        """Cache and save a re-measured profile, keeping earlier perplexities if it measured none."""
        async with self._profile_lock:
            previous = self._profile or service_measure.load_saved(self.profile_path, self.ready())
            kept = service_measure.keep_quality(fresh, previous)
            self._keep(kept)
            service_measure.save(self.profile_path, kept)
            return kept

    def _keep(self, profile: Profile | None) -> None:
        """Cache `profile` (None: none yet) and tell `on_profile`."""
        self._profile = profile
        if profile is not None:
            self.on_profile(profile)

    def budgets(self) -> tuple[TierBudget, ...]:
        """Every tier's budget now."""
        return tuple(TierBudget(name, budget) for name, budget in self.ready().budgets.items())

    async def apply(self, plan: Plan, current: Callable[[], bool] | None = None) -> SwitchReport:
        """Switch the runtime to `plan` (on the worker pool); with `current` (a re-plan's), only if it
        still says True under the runtime's apply lock, else Superseded with nothing changed."""

        def still_current() -> None:
            if current is not None and not current():
                raise Superseded("a newer target or plan came first")

        switch = await self.run(self.ready().apply_plan, plan, None, still_current)
        self.metrics.switch(switch.report)
        self.last_switch = switch.report
        self.on_switch()
        return switch.report


def _quiet(stage: str, fraction: float) -> None:
    """Progress sink for measurements nobody watches."""
