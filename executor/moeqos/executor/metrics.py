"""The executor's domain metrics, added to its server's registry (moeqos.api.metrics has the per-call ones).

Events are counted as they happen (a generation's end, a plan switch); state is read at scrape time by
a collector (the expert store's counters, the standing target), so a scrape never waits on a lock the
model holds for long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from moeqos.api.metrics import annotate
from moeqos.core.qos import QosTarget
from moeqos.executor.generation import GenerationStats
from moeqos.executor.store import StoreStats
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, StateSetMetricFamily
from prometheus_client.registry import Collector

TARGET_STATES = ("none", "idle", "replanning", "applied", "retrying", "failed")
"""States of the standing target: none set, then StandingTarget.state's first word."""

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RATE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
SWITCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ExecutorMetrics:
    """Generation and plan-switch figures, plus a scrape-time collector of the store and the target."""

    def __init__(
        self,
        registry: CollectorRegistry,
        store_stats: Callable[[], StoreStats | None],
        target: Callable[[], tuple[QosTarget | None, str]],
    ) -> None:
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
        registry.register(_StateCollector(store_stats, target))

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

    def switch(self, experts_changed: int, seconds: float) -> None:
        """Record an applied plan switch."""
        self.switches.inc()
        self.switch_seconds.observe(seconds)
        self.switched_experts.inc(experts_changed)
        annotate(experts_changed=experts_changed)


class _StateCollector(Collector):
    """Reads the expert store's counters and the standing target at scrape time."""

    def __init__(
        self,
        store_stats: Callable[[], StoreStats | None],
        target: Callable[[], tuple[QosTarget | None, str]],
    ) -> None:
        self._store_stats = store_stats
        self._target = target

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | StateSetMetricFamily]:
        stats = self._store_stats()
        if stats is not None:  # None until the model is loaded
            yield from _store_families(stats)
        target, state = self._target()
        current = "none" if target is None else state.split(":")[0].split(" ")[0]
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
