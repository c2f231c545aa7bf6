"""Small requests that would make a server allocate without bound are refused before it allocates.

The planner runs as a real process under an address-space limit (`prlimit`), so a regression fails
this test with an error instead of exhausting the machine's memory."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace

import pytest
from moeqos.bench.cluster import Cluster
from moeqos.client import ConnectOptions, PlannerClient
from moeqos.core.errors import InvalidArgument
from moeqos.planner.catalog import MODELS

pytestmark = pytest.mark.e2e

LIMIT_BYTES = 3 << 30


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_whatif_with_a_huge_model_description_is_refused(tmp_path):
    huge = replace(MODELS["mixtral-8x7b"], num_layers=100_000, num_experts=100_000)
    with Cluster(tmp_path, grace_seconds=5.0, wrapper=("prlimit", f"--as={LIMIT_BYTES}")) as cluster:
        planner = cluster.start("planner", "planner", [])
        with PlannerClient(planner.address, ConnectOptions(timeout=60)) as client:
            asked = time.monotonic()
            with pytest.raises(InvalidArgument):  # OutOfRange is an InvalidArgument
                client.whatif(huge, "cpu-2core", frontier_points=2)
            assert time.monotonic() - asked < 10.0
            assert client.health() == "SERVING"
            assert client.whatif(MODELS["mixtral-8x7b"], "cpu-2core", frontier_points=2).frontier
