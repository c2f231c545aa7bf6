"""`Evaluate` with a plan never touches the serving plan (issue 16, case 2): while it runs, everyone
else is served the plan in force and an admin's plan switch goes through at once; the evaluation
takes an admission slot like a generation; disk-tier files it would write count against the budget."""

from __future__ import annotations

import threading

import pytest
from moeqos.client import ExecutorClient, Sampling
from moeqos.core.errors import OverBudget
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.precision import expert_bytes as one_expert_bytes
from moeqos.executor import evaluation

from tests.service.service_harness import address

GREEDY = Sampling(max_tokens=12, temperature=0.0)
PROMPT = "the quick brown fox"


class Paused:
    """Holds every evaluation inside its perplexity pass until `release()`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside, self.go = threading.Event(), threading.Event()
        original = evaluation.perplexity

        def paused(*args, **kwargs):
            self.inside.set()
            assert self.go.wait(60), "the test never released the evaluation"
            return original(*args, **kwargs)

        monkeypatch.setattr(evaluation, "perplexity", paused)

    def release(self) -> None:
        self.go.set()


def _evaluate_in_background(client: ExecutorClient, plan: Plan) -> tuple[threading.Thread, list]:
    results: list = []

    def call() -> None:
        try:
            results.append(client.evaluate("ptb:valid", max_tokens=32, plan=plan))
        except Exception as exc:  # handed to the test thread
            results.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, results


def test_evaluate_with_a_plan_leaves_the_serving_plan_alone(stack, profile_file, monkeypatch):
    handle = stack.executor(tier_budgets={"disk": 0}, max_concurrent=2)
    runtime = handle.servicer.runtime
    int2 = Plan.uniform(runtime.num_layers, runtime.num_experts, Precision.INT2, "cpu")
    int8 = Plan.uniform(runtime.num_layers, runtime.num_experts, Precision.INT8, "cpu")
    paused = Paused(monkeypatch)
    with ExecutorClient(address(handle.port)) as client:
        serving, text = client.info().plan, client.complete(PROMPT, GREEDY).text
        thread, results = _evaluate_in_background(client, int2)
        assert paused.inside.wait(60)
        assert client.info().plan == serving  # everyone else still sees and gets the plan in force
        assert client.complete(PROMPT, GREEDY).text == text
        client.apply_plan(int8, timeout=30)  # an admin switch does not wait for the evaluation
        paused.release()
        thread.join(60)
        assert results and results[0].plan_spec == int2.to_spec()
        assert client.info().plan == int8  # the evaluation did not put its "previous" plan back
        alone = client.evaluate("ptb:valid", max_tokens=32, plan=int2)
        assert alone.perplexity == pytest.approx(results[0].perplexity, rel=1e-6)  # measured int2


def test_evaluate_takes_an_admission_slot(stack, profile_file, monkeypatch):
    handle = stack.executor(tier_budgets={"disk": 0}, max_concurrent=1, max_queued=0)
    runtime = handle.servicer.runtime
    int4 = Plan.uniform(runtime.num_layers, runtime.num_experts, Precision.INT4, "cpu")
    paused = Paused(monkeypatch)
    with ExecutorClient(address(handle.port)) as client:
        thread, results = _evaluate_in_background(client, int4)
        assert paused.inside.wait(60)
        with pytest.raises(OverBudget, match="executor busy"):
            client.complete(PROMPT, GREEDY)
        paused.release()
        thread.join(60)
        assert results and not isinstance(results[0], Exception)


def test_evaluate_disk_writes_count_against_the_disk_budget(stack, profile_file, tmp_path):
    handle = stack.executor(variant_cache_dir=tmp_path / "variants", tier_budgets={"disk": 0})
    runtime = handle.servicer.runtime
    layers, experts = runtime.num_layers, runtime.num_experts
    on_disk = Plan.uniform(layers, experts, Precision.INT8, "disk")
    int4_on_disk = Plan.uniform(layers, experts, Precision.INT4, "disk")
    int8_bytes = layers * experts * one_expert_bytes(*runtime.shape, Precision.INT8, on_disk.group_size)
    runtime.set_budget("disk", int8_bytes)  # room for every expert int8 on disk, and no more
    with ExecutorClient(address(handle.port)) as client:
        client.apply_plan(on_disk)
        files = set(runtime.factory.directory.iterdir())
        with pytest.raises(OverBudget, match="disk budget"):
            client.evaluate("ptb:valid", max_tokens=32, plan=int4_on_disk)
        assert set(runtime.factory.directory.iterdir()) == files  # refused before writing anything
        assert client.info().plan == on_disk
