"""The demo's wait for the variants built ahead, with real executors: it returns once every executor's
build is done (or off), and, past its limit, goes on and says which executor was still building."""

from __future__ import annotations

from moeqos.client import ExecutorClient
from moeqos.demo.variants import wait_for_variants_ahead
from moeqos.executor.variant_warmup import WarmupSettings

from tests.service.service_harness import address


def test_the_wait_ends_when_every_build_is_done_or_off(stack, tmp_path):
    building = stack.executor(
        tier_budgets={"cpu": 600_000, "disk": 0}, variant_cache_dir=tmp_path / "v", warmup=WarmupSettings()
    )
    executors = {"building": address(building.port), "off": address(stack.executor().port)}
    lines: list[str] = []
    assert wait_for_variants_ahead(executors, lines.append, limit_s=120, poll_s=0.05)
    with ExecutorClient(executors["building"]) as client:
        assert client.info().variants_ahead.startswith("done")
    with ExecutorClient(executors["off"]) as client:
        assert client.info().variants_ahead == "off"
    assert not any("off:" in line or "still building" in line for line in lines)


def test_past_its_limit_the_wait_goes_on_and_names_the_executor_still_waiting(stack, tmp_path):
    unprofiled = stack.executor(
        profile_path=None, variant_cache_dir=tmp_path / "v", warmup=WarmupSettings()
    )  # its build waits for a profile that nothing measures here
    lines: list[str] = []
    assert not wait_for_variants_ahead(
        {"late": address(unprofiled.port)}, lines.append, limit_s=0.2, poll_s=0.05
    )
    assert lines[0].startswith("waiting for the variants built ahead") and "late: not started" in lines[0]
    assert (
        lines[-1].startswith("variants still building after 0.2s, going on")
        and "late: not started" in lines[-1]
    )
