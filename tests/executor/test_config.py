"""ExecutorConfig validates its fields at construction; set_budget validates its arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from moeqos.cli import serve_cmds
from moeqos.core.errors import InvalidArgument
from moeqos.core.precision import Precision
from moeqos.executor.config import BatchLimits, ExecutorConfig, check_settings
from moeqos.executor.server import ExecutorServerConfig


@pytest.mark.parametrize(
    "overrides",
    [
        {"dense_precision": "int4"},
        {"device": "disk"},
        {"device": "gpu"},
        {"tier_budgets": {"nvme": 1}},
        {"tier_budgets": {"cpu": -1}},
        {"disk_pool_slots": 0},
        {"host_policy": "stream"},
        {"disk_reads": "direct"},
        {"memory_cache_bytes": -1},
        {"threads": 0},
    ],
)
def test_bad_fields_are_rejected(overrides) -> None:
    with pytest.raises(ValueError):
        ExecutorConfig(model_dir=Path("m"), **overrides)


def test_tiers_follow_the_device() -> None:
    assert ExecutorConfig(model_dir=Path("m")).tiers == ("cpu", "disk")
    gpu = ExecutorConfig(model_dir=Path("m"), device="cuda:0", dense_precision=Precision.FP16)
    assert gpu.tiers == ("cuda:0", "cpu", "disk") and gpu.dense_precision is Precision.FP16


def test_set_budget_rejects_unknown_tiers_and_negative_bytes(runtime) -> None:
    with pytest.raises(InvalidArgument):
        runtime.set_budget("cuda:0", 10)
    with pytest.raises(InvalidArgument):
        runtime.set_budget("cpu", -5)
    assert runtime.set_budget("disk", 0) is True  # the fp32 plan puts nothing on disk


def _executor_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cmds.register(parser.add_subparsers())
    return parser.parse_args(["executor", *argv])


def test_disk_reads_come_from_the_flag_then_the_environment() -> None:
    def reads(argv: tuple[str, ...], env: dict[str, str]) -> str:
        config = ExecutorServerConfig.from_env_and_args(_executor_flags(*argv), env=env)
        return config.runtime_config(Path("m")).disk_reads

    assert reads((), {}) == "cached"
    assert reads((), {"MOEQOS_DISK_READS": "uncached"}) == "uncached"
    assert reads(("--disk-reads", "cached"), {"MOEQOS_DISK_READS": "uncached"}) == "cached"
    with pytest.raises(ValueError, match="disk_reads"):
        reads((), {"MOEQOS_DISK_READS": "sometimes"})


def test_budgets_come_from_the_flags_then_the_environment() -> None:
    def budgets(argv: tuple[str, ...], env: dict[str, str]) -> dict[str, int]:
        return ExecutorServerConfig.from_env_and_args(_executor_flags(*argv), env=env).tier_budgets

    assert budgets((), {}) == {}
    assert budgets((), {"MOEQOS_BUDGETS": "cpu=2GiB, disk=20GiB"}) == {"cpu": 2 << 30, "disk": 20 << 30}
    assert budgets(("--budget", "cpu=1GiB"), {"MOEQOS_BUDGETS": "cpu=2GiB,disk=20GiB"}) == {"cpu": 1 << 30}


def test_disk_pool_slots_come_from_the_flag_then_the_environment() -> None:
    def slots(argv: tuple[str, ...], env: dict[str, str]) -> int:
        config = ExecutorServerConfig.from_env_and_args(_executor_flags(*argv), env=env)
        assert config.runtime_config(Path("m")).disk_pool_slots == config.disk_pool_slots
        return config.disk_pool_slots

    assert slots((), {}) == 8
    assert slots((), {"MOEQOS_DISK_SLOTS": "3"}) == 3
    assert slots(("--disk-slots", "2"), {"MOEQOS_DISK_SLOTS": "3"}) == 2
    with pytest.raises(ValueError, match="disk_pool_slots"):  # 0 is refused, not taken for "unset"
        slots(("--disk-slots", "0"), {})


def test_a_zero_is_a_value_not_an_absent_setting() -> None:
    def config(*argv: str) -> ExecutorServerConfig:
        return ExecutorServerConfig.from_env_and_args(_executor_flags(*argv), env={})

    assert config("--max-queued", "0").max_queued == 0
    assert config().max_queued == 16
    with pytest.raises(ValueError, match="max_concurrent"):
        config("--max-concurrent", "0")
    with pytest.raises(ValueError, match="max_tokens_in_flight"):
        config("--max-tokens-in-flight", "0")
    with pytest.raises(ValueError, match="threads"):
        config("--threads", "0")


def test_state_path_and_write_window_come_from_the_flags_then_the_environment() -> None:
    def config(argv: tuple[str, ...], env: dict[str, str]) -> ExecutorServerConfig:
        return ExecutorServerConfig.from_env_and_args(_executor_flags(*argv), env=env)

    assert (config((), {}).state_path, config((), {}).write_window_s) == (None, 30.0)
    env = {"MOEQOS_STATE_PATH": "/var/lib/moeqos/state.json", "MOEQOS_WRITE_WINDOW_S": "5"}
    assert config((), env).state_path == Path("/var/lib/moeqos/state.json")
    assert config((), env).write_window_s == 5.0
    flagged = config(("--state-path", "s.json", "--write-window", "2.5"), env)
    assert (flagged.state_path, flagged.write_window_s) == (Path("s.json"), 2.5)
    with pytest.raises(ValueError, match="write_window_s"):  # 0 is refused, not taken for "unset"
        config(("--write-window", "0"), {})


@pytest.mark.parametrize(
    "overrides",
    [
        {"dense_precision": "int4"},
        {"device": "disk"},
        {"tier_budgets": {"nvme": 1}},
        {"tier_budgets": {"cpu": -1}},
        {"disk_pool_slots": 0},
        {"disk_reads": "direct"},
        {"threads": 0},
    ],
)
def test_the_server_config_checks_the_runtime_settings_it_holds(overrides) -> None:
    with pytest.raises(ValueError):
        ExecutorServerConfig(**overrides)
    with pytest.raises(ValueError):
        check_settings(**{**SERVER_DEFAULTS, **overrides})


SERVER_DEFAULTS: dict = {
    "device": "cpu",
    "dense_precision": "bf16",
    "tier_budgets": {},
    "disk_pool_slots": 8,
    "disk_reads": "cached",
    "threads": None,
}


def test_batch_limits_come_from_flags_and_environment() -> None:
    """--max-concurrent is the batch size; the tokens in flight come from their flag or variable."""

    def batch(argv: tuple[str, ...], env: dict[str, str]) -> BatchLimits:
        config = ExecutorServerConfig.from_env_and_args(_executor_flags(*argv), env=env)
        return config.runtime_config(Path("m")).batch

    assert batch((), {}) == BatchLimits(max_batch=16, max_tokens=65536)
    env = {"MOEQOS_MAX_TOKENS_IN_FLIGHT": "900", "MOEQOS_MAX_CONCURRENT": "3"}
    assert batch((), env) == BatchLimits(max_batch=3, max_tokens=900)
    assert batch(("--max-tokens-in-flight", "500", "--max-concurrent", "4"), env) == BatchLimits(4, 500)
    with pytest.raises(ValueError, match="positive"):
        BatchLimits(prefill_chunk=0)
