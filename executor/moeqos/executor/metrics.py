"""The executor's domain metrics, added to its server's registry (moeqos.api.metrics has the per-call ones).

Events are counted as they happen (a generation's end, a plan switch); state is read at scrape time by
a collector (the expert store's counters, the standing target), so a scrape never waits on a lock the
model holds for long.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from moeqos.api.metrics import annotate
from moeqos.core.qos import QosTarget
from moeqos.core.service_types import GenerationStats, ReplanState, SwitchReport
from moeqos.executor.store import StoreStats
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, StateSetMetricFamily
from prometheus_client.registry import Collector

TARGET_STATES = ("none", *(state.value for state in ReplanState if state is not ReplanState.UNKNOWN))
"""States of the standing target: none set, then its re-plan state."""

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RATE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
SWITCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ExecutorMetrics:
    """Generation and plan-switch figures, plus a scrape-time collector of the store and the target."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.generations = Counter(
            "moeqos_generations",
            "Finished generations, by finish reason.",
            ["finish_reason"],
            registry=registry,
        )
        self.prompt_tokens = Counter("moeqos_prompt_tokens", "Prompt tokens read.", registry=registry)
        self.generated_tokens = Counter("moeqos_generated_tokens", "Tokens generated.", registry=registry)
        self.ttft = Histogram(
            "moeqos_time_to_first_token_seconds",
            "Time from a request's start to its first token.",
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.decode_rate = Histogram(
            "moeqos_decode_tokens_per_second",
            "Decode rate of each generation after its first token.",
            buckets=RATE_BUCKETS,
            registry=registry,
        )
        self.switches = Counter("moeqos_plan_switches", "Plan switches applied.", registry=registry)
        self.switch_seconds = Histogram(
            "moeqos_plan_switch_duration_seconds",
            "Time each plan switch took.",
            buckets=SWITCH_BUCKETS,
            registry=registry,
        )
        self.switched_experts = Counter(
            "moeqos_plan_switch_experts_changed",
            "Experts whose precision or tier a switch changed.",
            registry=registry,
        )

    def observe(self, served: ServedState, target: TargetState) -> None:
        """Read the store's counters and the standing target from these two at every scrape."""
        self._registry.register(_StateCollector(served, target))

    def generation(self, stats: GenerationStats) -> None:
        """Record a finished generation (and put its token counts on the call's log line)."""
        self.generations.labels(stats.finish_reason).inc()
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.generated_tokens.inc(stats.generated_tokens)
        if stats.generated_tokens:
            self.ttft.observe(stats.time_to_first_token_s)
            self.decode_rate.observe(stats.tokens_per_s)
        annotate(
            prompt_tokens=stats.prompt_tokens,
            tokens=stats.generated_tokens,
            finish=stats.finish_reason,
        )

    def switch(self, report: SwitchReport) -> None:
        """Record an applied plan switch."""
        self.switches.inc()
        self.switch_seconds.observe(report.seconds)
        self.switched_experts.inc(report.experts_changed)
        annotate(experts_changed=report.experts_changed)


class _Store(Protocol):
    def store_stats(self) -> StoreStats: ...


class ServedState(Protocol):
    """What the collector reads of the served model: its runtime, None until loaded."""

    @property
    def runtime(self) -> _Store | None: ...


class TargetState(Protocol):
    """What the collector reads of the standing target."""

    @property
    def target(self) -> QosTarget | None: ...

    @property
    def state(self) -> ReplanState: ...


class _StateCollector(Collector):
    """Reads the expert store's counters and the standing target at scrape time."""

    def __init__(self, served: ServedState, target: TargetState) -> None:
        self._served = served
        self._target = target

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | StateSetMetricFamily]:
        runtime = self._served.runtime
        if runtime is not None:  # None until the model is loaded
            yield from _store_families(runtime.store_stats())
        target = self._target.target
        current = "none" if target is None else self._target.state.value
        yield StateSetMetricFamily(
            "moeqos_standing_target_state",
            "The standing target's re-plan state (none: no target set).",
            {name: name == current for name in TARGET_STATES},
        )
        bounds = GaugeMetricFamily(
            "moeqos_standing_target", "The standing target's bounds (absent: not set).", labels=["bound"]
        )
        for bound in ("min_tokens_per_s", "max_perplexity", "max_perplexity_increase"):
            value = None if target is None else getattr(target, bound)
            if value is not None:
                bounds.add_metric([bound], value)
        yield bounds


def _store_families(stats: StoreStats) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    yield CounterMetricFamily(
        "moeqos_expert_pool_hits", "Disk-tier expert lookups found resident.", value=stats.hits
    )
    yield CounterMetricFamily(
        "moeqos_expert_pool_misses", "Disk-tier expert lookups that loaded the expert.", value=stats.misses
    )
    yield CounterMetricFamily(
        "moeqos_expert_pool_evictions", "Experts evicted from the disk-tier pool.", value=stats.evictions
    )
    yield CounterMetricFamily(
        "moeqos_expert_bytes_moved", "Expert bytes moved between tiers.", value=stats.bytes_moved
    )
    yield GaugeMetricFamily(
        "moeqos_expert_pool_resident_slots",
        "Disk-tier pool slots holding an expert.",
        value=stats.resident_slots,
    )
    yield GaugeMetricFamily("moeqos_expert_pool_slots", "Disk-tier pool slots.", value=stats.slots)
