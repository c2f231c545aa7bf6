"""Fixtures of the service tests: one tiny random Mixtral and one planner + executor for the session
(module-independent servers for tests that need special settings are started by the tests)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ensure_stubs() -> None:
    """Generate the gRPC stubs with the one script if they are missing (a fresh checkout)."""
    try:
        import moeqos_proto.executor.v1.executor_pb2_grpc  # noqa: F401
    except ModuleNotFoundError:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "gen_protos.sh")], check=True, env={"PYTHON": sys.executable}
        )


_ensure_stubs()

from executor.server import ExecutorHandle  # noqa: E402
from moeqos.server_common import Server  # noqa: E402
from tests.service.service_harness import Stack, address  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from executor.testing import make_tiny_mixtral

    return make_tiny_mixtral(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def stack(tiny_model: Path) -> Iterator[Stack]:
    stack = Stack(tiny_model)
    yield stack
    stack.close()


@pytest.fixture(scope="session")
def planner(stack: Stack) -> Server:
    return stack.planner()


@pytest.fixture(scope="session")
def executor(stack: Stack) -> ExecutorHandle:
    """The shared executor: cpu budget 600 kB (all bf16 fits, all fp32 does not), no disk tier budget."""
    return stack.executor(budgets={"cpu": 600_000, "disk": 0})


@pytest.fixture(scope="session")
def executor_address(executor: ExecutorHandle) -> str:
    return address(executor.port)


@pytest.fixture(scope="session")
def planner_address(planner: Server) -> str:
    return address(planner.port)
