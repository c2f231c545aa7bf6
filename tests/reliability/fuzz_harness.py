"""Sends fuzzed requests to live servers as raw bytes and checks each answer and the servers after it.

Every answer must be a clear status (`CLEAR`), never INTERNAL or UNKNOWN; after a refused request the
executor's plan, budgets and standing target must be what they were, and both servers SERVING. A
request that was accepted (some fuzzed inputs are valid) is undone before the next one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from moeqos.client import ExecutorClient
from moeqos.client.base import SyncBase
from moeqos.core.plan import Plan

CLEAR = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
"""Answers a malformed or extreme request may get."""
EXECUTOR = "/moeqos.executor.v1.ExecutorService/"
PLANNER = "/moeqos.planner.v1.PlannerService/"
TRIED: Counter[tuple[str, str]] = Counter()
"""Answers by (method, status) over the whole session, for the summary (tests/reliability/conftest.py)."""
STREAMS = frozenset({"Generate", "MeasureProfile"})
CALL_TIMEOUT = 60.0
"""A fuzzed call still unanswered by then is a hang (DEADLINE_EXCEEDED is not a clear answer)."""


@dataclass(frozen=True)
class State:
    """What a refused request must leave alone."""

    plan: Plan
    budgets: tuple[tuple[str, int], ...]
    target: object


@dataclass(repr=False)
class Fuzzer:
    """Live servers under fuzz, the state to keep, and the answers counted per method and code."""

    executor_address: str
    planner_address: str
    baseline: State
    counts: Counter[tuple[str, str]] = field(default_factory=lambda: TRIED)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Fuzzer({self.executor_address}, {self.planner_address})"

    def send(self, address: str, path: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
        """One call with a raw serialized request; its status code and details."""
        channel = self._channels.setdefault(address, grpc.insecure_channel(address))
        method = path.rsplit("/", 1)[-1]
        try:
            if method in STREAMS:
                for _ in channel.unary_stream(path)(payload, timeout=CALL_TIMEOUT):
                    pass
            else:
                channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""

    def check(
        self, service: str, method: str, payload: bytes, also: frozenset[grpc.StatusCode] = frozenset()
    ) -> grpc.StatusCode:
        """Send, require a clear answer, then require healthy servers and an untouched (or restored) state."""
        address = self.executor_address if service == EXECUTOR else self.planner_address
        code, details = self.send(address, service + method, payload)
        self.counts[(method, code.name)] += 1
        assert code in CLEAR | also, f"{method} answered {code.name}: {details} (request {payload[:200]!r})"
        self.settle(method, code)
        return code

    def state(self) -> State:
        with ExecutorClient(self.executor_address) as client:
            info = client.info()
        return State(info.plan, tuple((t.name, t.budget_bytes) for t in info.tiers), info.standing_target)

    def settle(self, method: str, code: grpc.StatusCode) -> None:
        """Healthy servers; the baseline state, restored first if the request was accepted."""
        for address in (self.executor_address, self.planner_address):
            with SyncBase(address) as probe:
                assert probe.health() == "SERVING", f"{address} not SERVING after {method} ({code.name})"
        now = self.state()
        assert code == grpc.StatusCode.OK or now == self.baseline, (
            f"{method} refused ({code.name}) but changed {now}"
        )
        if now != self.baseline:
            self.restore()

    def restore(self) -> None:
        with ExecutorClient(self.executor_address) as client:
            client.set_target(None)
            for tier, budget in self.baseline.budgets:
                client.set_budget(tier, budget)
            client.apply_plan(self.baseline.plan)
        assert self.state() == self.baseline

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def serialized(message: Any) -> bytes:
    return bytes(message.SerializeToString())


def summary() -> list[str]:
    """The inputs tried, by method and answer."""
    lines = [f"fuzz: {sum(TRIED.values())} malformed or extreme requests tried, answers by method:"]
    return lines + [f"  {method:<10} {code:<20} {n}" for (method, code), n in sorted(TRIED.items())]
