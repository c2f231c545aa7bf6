"""Shared pytest configuration and fixtures. Layers mirror the packages: tests/planner (pure),
tests/executor (tiny random Mixtrals), tests/service (real gRPC on loopback), tests/reliability
(faults, fuzzing, security), tests/e2e (real processes), tests/model (the embedded default model,
marked slow).

The session fixtures here give the service and reliability tests one tiny random Mixtral and one
planner + executor; the executor measures the tiny model's profile once and saves it where every later
executor reads it (tests that need special settings start their own servers)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ensure_stubs() -> None:
    """Generate the gRPC stubs with the one script if they are missing (a fresh checkout)."""
    try:
        import moeqos.proto.executor.v1.executor_pb2_grpc  # noqa: F401
    except ModuleNotFoundError:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "gen_protos.sh")], check=True, env={"PYTHON": sys.executable}
        )


_ensure_stubs()

from moeqos.api.server import Server  # noqa: E402
from moeqos.client import ExecutorClient  # noqa: E402
from moeqos.executor.server import ExecutorHandle  # noqa: E402

from tests.service.service_harness import Stack, address  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from moeqos.executor.testing import make_tiny_mixtral

    return make_tiny_mixtral(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def bare_stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tiny_model, tmp_path_factory.mktemp("profile") / "profile.json")
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def _stop_a_tests_own_executors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Executors a test started on the shared stack stop at its end (Stack.stop_started_since); the
    session's own, started by fixtures of a wider scope before this one, keep serving."""
    if "stack" not in request.fixturenames:
        yield
        return
    stack: Stack = request.getfixturevalue("stack")
    mark = stack.started()
    yield
    stack.stop_started_since(mark)


@pytest.fixture(scope="session")
def planner(bare_stack: Stack) -> Server:
    return bare_stack.planner()


@pytest.fixture(scope="session")
def executor(bare_stack: Stack) -> ExecutorHandle:
    """The shared executor: cpu budget 600 kB (all bf16 fits, all fp32 does not), no disk tier budget.
    Its profile is measured here, once, and saved where every later executor of the stack reads it."""
    handle = bare_stack.executor(tier_budgets={"cpu": 600_000, "disk": 0})
    with ExecutorClient(address(handle.port)) as client:
        assert not client.info().profile_cached
        client.get_profile()
    assert bare_stack.profile_path.is_file()
    return handle


@pytest.fixture(scope="session")
def stack(bare_stack: Stack, executor: ExecutorHandle) -> Stack:
    """The servers' stack, once the shared profile exists (so new executors need not measure)."""
    return bare_stack


@pytest.fixture(scope="session")
def executor_address(executor: ExecutorHandle) -> str:
    return address(executor.port)


@pytest.fixture(scope="session")
def planner_address(planner: Server) -> str:
    return address(planner.port)
