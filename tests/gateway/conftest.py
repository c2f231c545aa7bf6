"""Fixtures of the gateway tests: one gateway in front of the shared tiny-model executor (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.gateway_harness import RunningGateway, start_gateway

FAST = "tiny-moe:fast"
"""The model name (QoS class) the shared gateway routes to the shared executor."""


@pytest.fixture(scope="module")
def gateway(executor_address: str) -> Iterator[RunningGateway]:
    running = start_gateway({FAST: (executor_address,)})
    yield running
    running.close()
