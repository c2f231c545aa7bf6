"""Plan switches release the memory of the experts they replace (issue 16, case 7): no expert module
outlives a switch except the ones served and the ones the bounded variant cache keeps (Evaluate's
private copies included), and the process's RSS after many switches stays within 10% of its RSS
after the first round."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.host_memory import release_freed_memory
from moeqos.executor.quant import QuantExpert
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.testing import make_tiny_mixtral

PRECISIONS = (Precision.INT8, Precision.INT4, Precision.BF16, Precision.INT2)


def _live_experts() -> int:
    gc.collect()
    return sum(type(o) is QuantExpert for o in gc.get_objects())


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def test_switches_keep_no_replaced_expert(tiny_model: Path):
    config = ExecutorConfig(tiny_model, memory_cache_bytes=0, tier_budgets={"disk": 0})
    others = _live_experts()  # held by runtimes other tests in this process keep (session fixtures)
    with ExecutorRuntime.load(config) as runtime:
        layers, experts = runtime.num_layers, runtime.num_experts
        plans = [Plan.uniform(layers, experts, p, "cpu") for p in PRECISIONS]
        ids = list(range(3, 40))
        for i in range(8):
            runtime.apply_plan(plans[i % 4])
            runtime.evaluate(ids, plans[(i + 1) % 4], context_length=16, decode_tokens=2)
            assert _live_experts() - others == layers * experts  # the served ones; the cache keeps none


@pytest.mark.skipif(not Path("/proc/self/status").is_file() or not release_freed_memory(), reason="glibc")
def test_rss_after_many_switches_stays_near_the_first_round(tmp_path: Path):
    model = make_tiny_mixtral(
        tmp_path / "model", hidden_size=512, intermediate_size=1024, num_layers=4, num_experts=8
    )
    config = ExecutorConfig(model, memory_cache_bytes=0, tier_budgets={"disk": 0}, threads=1)
    with ExecutorRuntime.load(config) as runtime:  # 32 experts of 3 MiB in bf16
        plans = [Plan.uniform(runtime.num_layers, runtime.num_experts, p, "cpu") for p in PRECISIONS]
        after_round: list[float] = []
        for _ in range(4):
            for plan in plans:
                runtime.apply_plan(plan)
            after_round.append(_rss_mib())
    assert max(after_round[1:]) <= 1.10 * after_round[0], after_round
