"""The planner stops working for callers who left (issue 16, case 4): a large WhatIf whose caller's
deadline passed stops within a frontier point, so a small call right after is answered at once; and
WhatIf/Frontier have their own bounded queue, refused with RESOURCE_EXHAUSTED past it."""

from __future__ import annotations

import threading
import time

import pytest
from moeqos.client import ConnectOptions, PlannerClient
from moeqos.core.errors import MoeqosError, OverBudget, Unavailable
from moeqos.planner.catalog import MODELS

from tests.service.service_harness import address

LARGE = MODELS["mixtral-8x7b"]
POINTS = 200
"""A 200-point frontier of Mixtral-8x7B: tens of CPU-seconds of solves, one per point."""


def _abandoned_whatifs(port: int, count: int, deadline_s: float) -> list[BaseException]:
    """`count` large WhatIfs at once, each given up by its caller after `deadline_s`."""
    errors: list[BaseException] = []

    def call() -> None:
        with PlannerClient(address(port), ConnectOptions(timeout=deadline_s)) as client:
            try:
                client.whatif(LARGE, "cpu-2core", frontier_points=POINTS)
            except MoeqosError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_work_stops_when_the_callers_deadline_passes(stack):
    server = stack.planner(workers=2, heavy_running=2)
    errors = _abandoned_whatifs(server.port, count=2, deadline_s=2.0)
    assert len(errors) == 2 and all(isinstance(e, Unavailable) for e in errors)  # DEADLINE_EXCEEDED
    asked = time.monotonic()
    with PlannerClient(address(server.port), ConnectOptions(timeout=15)) as client:
        assert client.whatif(LARGE, "cpu-2core", frontier_points=2).frontier
    assert time.monotonic() - asked < 10.0  # the abandoned frontiers stopped (each had ~30 s to go)


def test_whatif_has_its_own_bounded_queue(stack):
    server = stack.planner(workers=2, heavy_running=1, heavy_queued=0)
    background = threading.Thread(target=_abandoned_whatifs, args=(server.port, 1, 4.0))
    background.start()
    time.sleep(1.0)  # the large WhatIf holds the only what-if slot
    with PlannerClient(address(server.port), ConnectOptions(timeout=15)) as client:
        with pytest.raises(OverBudget, match="planner busy"):
            client.whatif(LARGE, "cpu-2core", frontier_points=2)
        assert client.health() == "SERVING"
    background.join(60)
