"""Variants built ahead with real servers: once serving with a profile, the executor writes the
variants of the profile's quantized precisions, says so in GetInfo and `moeqos status`, and a later
plan switch quantizes nothing; with `--warm-variants off` nothing is built ahead."""

from __future__ import annotations

import time

from moeqos.client import ExecutorClient
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile
from moeqos.executor.variant_warmup import WarmupSettings, warm_order

from tests.service.service_harness import address


def wait_done(client: ExecutorClient, seconds: float = 120.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        said = client.info().variants_ahead
        if said.startswith("done"):
            return said
        time.sleep(0.2)
    raise AssertionError(f"variants not built ahead in {seconds}s: {client.info().variants_ahead!r}")


def test_variants_are_built_ahead_once_serving_and_a_switch_then_quantizes_nothing(stack, tmp_path, capsys):
    from moeqos.cli.main import main

    handle = stack.executor(
        tier_budgets={"cpu": 600_000, "disk": 0}, variant_cache_dir=tmp_path / "v", warmup=WarmupSettings()
    )
    runtime = handle.servicer.served.ready()
    profile = Profile.from_json(stack.profile_path.read_text())
    order = warm_order(profile)
    assert Precision.INT4 in order and not any(p.is_float for p in order)
    with ExecutorClient(address(handle.port)) as client:
        said = wait_done(client)
        experts = runtime.num_layers * runtime.num_experts
        assert all(f"{p.value} {experts}" in said for p in order), said
        before = runtime.factory.quantized
        report = client.apply_plan(
            Plan.uniform(runtime.num_layers, runtime.num_experts, Precision.INT4, "cpu")
        )
        assert report.experts_changed == experts
        assert runtime.factory.quantized == before  # every changed expert read from its file
        assert client.info().last_switch == report  # GetInfo tells the last switch's size and time
    assert main(["status", "--executor", address(handle.port)]) == 0
    assert "variants built ahead: done: " in capsys.readouterr().out


def test_with_warm_variants_off_nothing_is_built_ahead(stack, tmp_path):
    handle = stack.executor(
        tier_budgets={"cpu": 600_000, "disk": 0},
        variant_cache_dir=tmp_path / "v",
        warmup=WarmupSettings(enabled=False),
    )
    with ExecutorClient(address(handle.port)) as client:
        assert client.info().variants_ahead == "off"
    assert not list((tmp_path / "v").rglob("*.int4.*"))
