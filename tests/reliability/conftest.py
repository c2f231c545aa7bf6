"""Fixtures of the reliability tests: a tiny random Mixtral, its measured profile, in-process servers
(tests.service.service_harness) and a cluster of real `moeqos` processes (bench.cluster)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cluster import Cluster
from client import ExecutorClient
from tests.service.service_harness import Stack, address


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from executor.testing import make_tiny_mixtral

    return make_tiny_mixtral(tmp_path_factory.mktemp("reliability") / "tiny")


@pytest.fixture(scope="session")
def stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """In-process servers on one background loop; executors share one profile file (measured once)."""
    servers = Stack(tiny_model, tmp_path_factory.mktemp("profile") / "profile.json")
    yield servers
    servers.close()


@pytest.fixture(scope="session")
def profile_file(stack: Stack) -> Path:
    """The tiny model's profile, measured once by a throwaway in-process executor and saved as JSON, so
    every executor (in-process or a real process) started later reads it instead of measuring."""
    if not stack.profile_path.is_file():
        handle = stack.executor(budgets={"disk": 0})
        with ExecutorClient(address(handle.port)) as client:
            client.get_profile()
        stack.bg.run(handle.stop(0.5))
    assert stack.profile_path.is_file()
    return stack.profile_path


@pytest.fixture
def cluster(tmp_path: Path, profile_file: Path) -> Iterator[Cluster]:
    """Real processes for one test; every one is stopped (SIGTERM, then SIGKILL) when the test ends."""
    shutil.copy(profile_file, tmp_path / "profile.json")
    with Cluster(tmp_path, grace_seconds=5.0) as processes:
        yield processes


def executor_args(model: Path, work: Path, *extra: str) -> list[str]:
    """Flags of a tiny-model executor process that reads the saved profile and keeps experts off disk."""
    return [
        "--model",
        str(model),
        "--profile-path",
        str(work / "profile.json"),
        "--budget",
        "disk=0",
        "--threads",
        "1",
        *extra,
    ]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many fuzzed inputs were tried (the README quotes the figure)."""
    from tests.reliability.fuzz_harness import TRIED, summary

    if TRIED:
        for line in summary():
            terminalreporter.write_line(line)
