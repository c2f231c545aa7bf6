"""ServedModel's lifecycle: empty (NotReady) until a runtime is attached, then the standing target's
hooks (budgets, apply) work on it; built before the servicer and the target, it needs neither."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from moeqos.core.errors import NotReady
from moeqos.core.plan import Plan
from moeqos.core.tier import TierBudget
from moeqos.executor.metrics import ExecutorMetrics
from moeqos.executor.service_measure import MeasureSettings
from moeqos.executor.service_model import ServedModel
from moeqos.executor.service_target import ReplanHooks
from prometheus_client import CollectorRegistry

from tests.executor.tiny import EXPERTS, LAYERS


def test_not_ready_until_attached_then_the_replan_hooks_act_on_the_runtime(runtime) -> None:
    with ThreadPoolExecutor(1) as pool:
        metrics = ExecutorMetrics(CollectorRegistry())
        served = ServedModel(pool, MeasureSettings(), None, metrics)
        hooks: ReplanHooks = served  # mypy checks ServedModel against the target's Protocol
        with pytest.raises(NotReady):
            hooks.budgets()
        served.attach(runtime)
        assert hooks.budgets() == tuple(TierBudget(n, b) for n, b in runtime.budgets.items())
        int8 = Plan.uniform(LAYERS, EXPERTS, "int8", "cpu")
        report = asyncio.run(served.apply(int8))
        assert runtime.plan == int8 and report.experts_changed == LAYERS * EXPERTS
        assert metrics.switches._value.get() == 1  # the switch is counted where it is applied
        assert not served.profile_cached
