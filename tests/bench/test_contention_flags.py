"""The contention section starts its executors with flags the executor's command line accepts."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from moeqos.bench import contention
from moeqos.cli.main import build_parser
from moeqos.core.tier import TierBudget
from moeqos.executor.server import ExecutorServerConfig


def test_the_executor_flags_of_the_contention_section_parse(tmp_path: Path) -> None:
    """Regression: the section passed `--budget cpu=1274019840`, which sizes without a unit now refuse."""
    (tmp_path / "config.json").write_text("{}")  # all the config checks of a model directory
    ctx = SimpleNamespace(budgets=(TierBudget("cpu", 1_274_019_840),), model_dir=tmp_path)
    for mode, enabled in (("on", True), ("off", False)):
        flags = contention._executor_args(ctx, Path("profile.json"), mode)
        config = ExecutorServerConfig.from_env_and_args(
            build_parser().parse_args(["executor", *flags]), env={}
        )
        assert config.tier_budgets == {"cpu": 1_274_019_840, "disk": 0}
        assert config.qos.enabled is enabled and config.max_concurrent == 1
