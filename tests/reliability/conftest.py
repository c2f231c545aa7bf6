"""Fixtures of the reliability tests: the shared tiny model's measured profile (tests/conftest.py) and a
cluster of real `moeqos` processes (moeqos.bench.cluster)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from moeqos.bench.cluster import Cluster

from tests.service.service_harness import Stack


@pytest.fixture(scope="session")
def profile_file(stack: Stack) -> Path:
    """The tiny model's profile, measured once by the shared executor (tests/conftest.py) and saved as
    JSON, so every executor (in-process or a real process) started later reads it instead of measuring."""
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
