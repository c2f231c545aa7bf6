"""The contention section starts its executors with flags the executor's command line accepts."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from moeqos.bench import contention
from moeqos.cli.main import build_parser
from moeqos.core.tier import TierBudget
from moeqos.executor.server import ExecutorServerConfig


def test_the_executor_flags_of_the_contention_section_parse(tmp_path: Path, monkeypatch) -> None:
    """Regression: the section passed `--budget cpu=1274019840`, which sizes without a unit now refuse."""
    (tmp_path / "config.json").write_text("{}")  # all the config checks of a model directory
    monkeypatch.setenv("MOEQOS_HOME", str(tmp_path))
    ctx = SimpleNamespace(
        budgets=(TierBudget("cpu", 1_274_019_840),),
        model_dir=tmp_path,
        profile=SimpleNamespace(disk_reads="uncached"),  # the bench profile's (for the disk tier)
    )
    for mode, enabled in (("on", True), ("off", False)):
        flags = contention._executor_args(ctx, Path("profile.json"), mode)
        config = ExecutorServerConfig.from_env_and_args(
            build_parser().parse_args(["executor", *flags]), env={}
        )
        assert config.tier_budgets == {"cpu": 1_274_019_840, "disk": 0}
        assert config.qos.enabled is enabled and config.max_concurrent == 1
        assert config.disk_reads == "cached"  # a deployment's: switches read variants from the page cache
        assert config.variant_cache_dir is not None and config.variant_cache_dir.name == "variants-contention"


def test_a_saved_profile_is_used_instead_of_measuring_and_another_models_is_refused(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Review leftover: `--profile FILE` (the contention section measured a profile on every run)."""
    import argparse
    import dataclasses

    import pytest
    from moeqos.bench.context import BenchContext
    from moeqos.bench.runner import add_arguments, command_line
    from moeqos.bench.settings import QUICK

    from tests.executor.test_qos_loop import profile

    context = BenchContext(tiny_model, QUICK, tmp_path, "test", tmp_path / "saved.json")
    model, hardware = context.runtime.model, context.runtime.hardware
    frequency = ((0.5,) * model.num_experts,) * model.num_layers
    saved = dataclasses.replace(profile(), model=model, hardware=hardware, frequency=frequency)
    (tmp_path / "saved.json").write_text(saved.to_json())
    parse = add_arguments(argparse.ArgumentParser()).parse_args
    args = parse(["--only", "contention", "--profile", str(tmp_path / "saved.json")])
    assert args.profile == tmp_path / "saved.json"
    assert f"--profile {tmp_path / 'saved.json'}" in command_line("moeqos bench", args)
    assert context.profile == saved
    other = BenchContext(tiny_model, QUICK, tmp_path, "test", tmp_path / "other.json")
    (tmp_path / "other.json").write_text(profile().to_json())
    with pytest.raises(ValueError, match="measured on model/device"):
        other.saved_profile(tmp_path / "other.json")


def test_a_saved_profile_of_another_version_is_refused_before_anything_loads(tmp_path: Path, capsys) -> None:
    import argparse
    import json

    import pytest
    from moeqos.bench.runner import add_arguments
    from moeqos.core.profile import PROFILE_VERSION

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"version": PROFILE_VERSION - 1}))
    with pytest.raises(SystemExit):
        add_arguments(argparse.ArgumentParser()).parse_args(["--profile", str(old)])
    said = capsys.readouterr().err
    assert f"a profile of version {PROFILE_VERSION - 1}, this build reads version {PROFILE_VERSION}" in said
    with pytest.raises(SystemExit):
        add_arguments(argparse.ArgumentParser()).parse_args(["--profile", str(tmp_path / "missing.json")])
    assert "not a readable profile JSON" in capsys.readouterr().err


def test_the_thread_actuator_has_its_own_switch(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    parse = build_parser().parse_args
    base = ["executor", "--model", str(tmp_path)]
    on = ExecutorServerConfig.from_env_and_args(parse(base), env={})
    off = ExecutorServerConfig.from_env_and_args(parse([*base, "--qos-threads", "off"]), env={})
    by_env = ExecutorServerConfig.from_env_and_args(parse(base), env={"MOEQOS_QOS_THREADS": "off"})
    assert on.qos.threads.enabled and on.qos.enabled
    assert not off.qos.threads.enabled and off.qos.enabled and not by_env.qos.threads.enabled


def test_variants_built_ahead_have_their_own_switch(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    parse = build_parser().parse_args
    base = ["executor", "--model", str(tmp_path)]
    on = ExecutorServerConfig.from_env_and_args(parse(base), env={})
    off = ExecutorServerConfig.from_env_and_args(parse([*base, "--warm-variants", "off"]), env={})
    by_env = ExecutorServerConfig.from_env_and_args(parse(base), env={"MOEQOS_WARM_VARIANTS": "off"})
    assert on.warmup.enabled and not off.warmup.enabled and not by_env.warmup.enabled
