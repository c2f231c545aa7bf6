"""The demo's pure parts: the QoS targets it reads off a frontier, its plot, and the health probe's exit."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from moeqos.cli.main import main
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.qos import QosTarget
from moeqos.core.service_types import PlanOutcome, Prediction
from moeqos.demo.hold import Held
from moeqos.demo.plot import Deployed, Point, plot_frontier
from moeqos.demo.run import free_ports
from moeqos.demo.scenario import (
    DemoSettings,
    ExecutorResult,
    _print_table,
    meets,
    quality_target,
    speed_target,
)


def outcome(precision: Precision, tokens_per_s: float, perplexity: float) -> PlanOutcome:
    return PlanOutcome(Plan.uniform(2, 4, precision, "cpu"), Prediction(tokens_per_s, perplexity))


FRONTIER = [
    outcome(Precision.INT3, 30.0, 14.0),
    outcome(Precision.INT4, 24.0, 11.0),
    outcome(Precision.BF16, 10.0, 10.0),
]


def test_targets_sit_on_the_executors_own_frontier() -> None:
    speed = speed_target(FRONTIER, DemoSettings())
    quality = quality_target(FRONTIER, DemoSettings())
    assert speed.max_perplexity_increase == 1.5  # 15% of the most accurate plan's perplexity
    assert speed.min_tokens_per_s is None
    assert quality.min_tokens_per_s == 13.0  # 15% of the way from 10 tok/s to 30 tok/s
    assert quality.max_perplexity is None and quality.max_perplexity_increase is None


def test_targets_round_down_so_a_single_point_frontier_stays_reachable() -> None:
    (only,) = [outcome(Precision.BF16, 723.6449, 320.7)]
    assert quality_target([only], DemoSettings()).min_tokens_per_s == 723.64
    assert speed_target([only], DemoSettings()).max_perplexity_increase == 48.1


def test_settings_override_the_frontier() -> None:
    settings = DemoSettings(max_perplexity_increase=0.5, min_tokens_per_s=20)
    assert speed_target(FRONTIER, settings).max_perplexity_increase == 0.5
    assert quality_target(FRONTIER, settings).min_tokens_per_s == 20


def test_the_table_says_whether_the_measured_numbers_meet_the_target() -> None:
    floor, ceiling = QosTarget(min_tokens_per_s=10.75), QosTarget(max_perplexity_increase=2.0)
    assert not meets(floor, 7.65, 30.0, 12.0)  # the executor-b: 7.65 tok/s against >= 10.75
    assert meets(floor, 10.75, 99.0, 12.0)
    assert meets(ceiling, 1.0, 14.0, 12.0) and not meets(ceiling, 1.0, 14.5, 12.0)


def test_the_table_judges_a_floor_on_the_executors_window_and_says_how_long_it_waited(
    capsys: pytest.CaptureFixture[str],
) -> None:
    held = Held(22.51, 12.0, 23.4, 3.0, "met", True, 1, "int4@cpu", True, (0.62,), "done: int4 240")
    result = ExecutorResult(
        "executor-b", "a:1", ">= 22.51 tok/s", "bf16", "bf16@cpu", 25.0, 10.0, "text",
        23.4, 10.5, 1024, True, generation_tokens_per_s=10.08, held=held,
    )  # fmt: skip
    _print_table([result], DemoSettings())
    out = capsys.readouterr().out
    assert "23.40" in out and "met" in out
    assert (
        "23.40 tok/s over its own 3s window vs floor 22.51 after waiting 12s (loop on, 1 plan changes" in out
    )
    assert "one generation after Deploy: 10.08" in out and "plan after the loop" in out
    assert "1 plan changes, 0.6s, state met); variants built ahead: done: int4 240" in out


def test_plot_writes_a_png(tmp_path: Path) -> None:
    lines = {"a": [Point(30, 14), Point(10, 10)], "b": [Point(28, 13), Point(9, 10)]}
    deployed = [Deployed("a", Point(30, 14), Point(27, 14.5)), Deployed("b", Point(9, 10), None)]
    path = plot_frontier(lines, deployed, tmp_path / "sub" / "frontier.png", "test")
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 500 and height > 300


def test_health_probe_fails_on_a_closed_port(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    assert main(["health", f"127.0.0.1:{port}", "--json"]) == 1
    assert '"status": "UNAVAILABLE' in capsys.readouterr().out
