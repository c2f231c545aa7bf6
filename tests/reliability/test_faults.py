"""Faults with real `moeqos` processes on the tiny model: an executor killed mid-stream, the planner down
during a re-plan, SIGTERM during traffic. (A plan switch failing halfway and corrupt checkpoints are in
test_broken_parts.)"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from moeqos.bench.cluster import Cluster
from moeqos.client import (
    ConnectOptions,
    DeploySpec,
    ExecutorClient,
    GenerationStats,
    PlannerClient,
    ReplanState,
    Sampling,
)
from moeqos.client.base import SyncBase
from moeqos.core.errors import MoeqosError, Unavailable
from moeqos.core.precision import Precision, expert_bytes
from moeqos.core.qos import Objective, QosTarget

from tests.reliability.conftest import executor_args

pytestmark = pytest.mark.e2e

QUALITY = QosTarget(objective=Objective.QUALITY)
PROMPTS = ("the quick brown fox", "hello world")


def health(address: str) -> str:
    try:
        with SyncBase(address, ConnectOptions(timeout=2)) as probe:
            return probe.health(timeout=1.0)
    except MoeqosError:
        return "UNAVAILABLE"


def health_until_serving(address: str, timeout: float = 240.0) -> list[str]:
    """The distinct health answers seen, in order, until SERVING."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] != "SERVING":
        assert time.monotonic() < deadline, f"not SERVING after {timeout:.0f}s: {seen}"
        status = health(address)
        if not seen or seen[-1] != status:
            seen.append(status)
        time.sleep(0.05)
    return seen


def test_executor_killed_mid_stream(cluster: Cluster, tiny_model: Path, tmp_path: Path) -> None:
    planner, executor = cluster.start_many(
        [("planner", "planner", []), ("executor", "executor", executor_args(tiny_model, tmp_path))]
    )
    spec = [DeploySpec(executor.address, QUALITY)]
    with ExecutorClient(executor.address) as client, PlannerClient(planner.address) as planning:
        stream = client.generate(PROMPTS[0], Sampling(max_tokens=900))
        assert next(stream).token_id is not None
        killed = time.monotonic()
        cluster.kill("executor", signal.SIGKILL)
        with pytest.raises(Unavailable):
            list(stream)
        assert time.monotonic() - killed < 5.0

        asked = time.monotonic()
        with pytest.raises(Unavailable) as refused:
            planning.deploy(spec, timeout=20.0)
        assert time.monotonic() - asked < 20.0 and "deadline" not in str(refused.value).lower()

        cluster.restart("executor", wait=False)
        seen = health_until_serving(executor.address)
        assert "NOT_SERVING" in seen and seen.index("NOT_SERVING") < seen.index("SERVING"), seen
        outcome = planning.deploy(spec, timeout=120.0)
        info = client.info()
        assert info.plan == outcome[0].plan and info.standing_target == QUALITY
        assert client.complete(PROMPTS[1], Sampling(max_tokens=4)).stats.generated_tokens == 4


def test_planner_down_executor_serves_and_replans_once_it_is_back(
    cluster: Cluster, tiny_model: Path, tmp_path: Path
) -> None:
    planner, executor = cluster.start_many(
        [("planner", "planner", []), ("executor", "executor", executor_args(tiny_model, tmp_path))]
    )
    with PlannerClient(planner.address) as planning:
        deployed = planning.deploy([DeploySpec(executor.address, QUALITY)], timeout=120.0)[0].plan
    cluster.kill("planner", signal.SIGKILL)
    with ExecutorClient(executor.address) as client:
        model = client.info().model
        tight = int(
            1.2
            * model.num_layers
            * model.num_experts
            * expert_bytes(model.hidden_size, model.intermediate_size, Precision.INT4)
        )
        assert client.set_budget("cpu", tight).replan_started
        _wait_for(lambda: client.info().replan_state is ReplanState.RETRYING, "a retry")
        served = client.complete(PROMPTS[0], Sampling(max_tokens=4)).stats
        assert served.generated_tokens == 4 and served.plan_spec == deployed.to_spec()
        assert client.info().plan == deployed

        cluster.restart("planner")
        _wait_for(lambda: client.info().replan_state is ReplanState.APPLIED, "the re-plan", timeout=90.0)
        info = client.info()
        assert info.plan != deployed
        assert next(t for t in info.tiers if t.name == "cpu").used_bytes <= tight
        assert client.complete(PROMPTS[1], Sampling(max_tokens=4)).stats.plan_spec == info.plan.to_spec()


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s"
        time.sleep(0.1)


def test_sigterm_lets_streams_finish_and_refuses_new_ones(
    cluster: Cluster, tiny_model: Path, tmp_path: Path
) -> None:
    args = executor_args(tiny_model, tmp_path, "--grace-seconds", "60", "--max-concurrent", "2")
    executor = cluster.start("executor", "executor", args)
    finished: list[GenerationStats] = []

    def stream(prompt: str, started: threading.Event) -> None:
        with ExecutorClient(executor.address) as client:
            events = client.generate(prompt, Sampling(max_tokens=150))
            next(events)
            started.set()
            last = list(events)[-1].stats
            assert last is not None
            finished.append(last)

    starts = [threading.Event() for _ in PROMPTS]
    threads = [threading.Thread(target=stream, args=(p, s)) for p, s in zip(PROMPTS, starts, strict=True)]
    for thread in threads:
        thread.start()
    assert all(s.wait(120) for s in starts)
    os.killpg(executor.pid, signal.SIGTERM)
    time.sleep(1.0)
    with ExecutorClient(executor.address, ConnectOptions(timeout=10)) as late, pytest.raises(Unavailable):
        late.complete(PROMPTS[0], Sampling(max_tokens=2))
    for thread in threads:
        thread.join(90)
    assert len(finished) == len(PROMPTS)
    for stats in finished:  # each ran to its end: its length, or the model's end of sequence
        assert (
            stats.finish_reason == "length" and stats.generated_tokens == 150
        ) or stats.finish_reason == "eos"
    assert executor.running.process.wait(60) == 0
