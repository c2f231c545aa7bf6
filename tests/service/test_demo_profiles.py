"""The demo's first step with real executors: those without a profile measure theirs at once, with
progress shown, and one that stops reporting progress fails the demo instead of blocking it."""

from __future__ import annotations

import pytest
from moeqos.client import ExecutorClient
from moeqos.core.errors import Unavailable
from moeqos.demo.profiles import measure_missing_profiles

from tests.service.service_harness import address


def test_executors_without_a_profile_measure_theirs_and_later_runs_measure_none(stack):
    executors = {name: address(stack.executor(profile_path=None).port) for name in ("one", "two")}
    lines: list[str] = []
    assert measure_missing_profiles(executors, lines.append, stall_s=120) == ["one", "two"]
    for name, target in executors.items():
        assert ExecutorClient(target).info().profile_cached
        mine = [line for line in lines if line.startswith(f"{name}: ")]
        assert mine[0].startswith(f"{name}: profile frequency") and "measured in" in mine[-1]
        assert {line.split()[2] for line in mine[:-1]} >= {"frequency", "call_costs", "quality"}
    assert measure_missing_profiles(executors, lines.append, stall_s=120) == []


def test_a_measurement_without_progress_for_the_stall_time_fails_with_the_executors_name(stack):
    target = address(stack.executor(profile_path=None).port)
    with pytest.raises(Unavailable, match=r"slow reported no profile progress for 0\.001s"):
        measure_missing_profiles({"slow": target}, lambda line: None, stall_s=0.001)
