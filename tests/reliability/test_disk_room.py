"""Disk edge cases (issue 16, case 8): a full cache filesystem does not stop a RAM-only plan; a disk-tier
plan whose files do not fit the free space now is refused (RESOURCE_EXHAUSTED) before anything changes;
a cache directory that cannot be created is a clear configuration error at start, not a traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections import namedtuple

import pytest
from moeqos.bench.cluster import ROOT
from moeqos.client import ExecutorClient
from moeqos.core.errors import OverBudget
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor import disk_room, integrity
from moeqos.executor.server import ExecutorServerConfig

from tests.service.service_harness import address

Usage = namedtuple("Usage", "total used free")


def test_a_full_cache_disk_does_not_stop_a_ram_only_plan(stack, profile_file, tmp_path, monkeypatch):
    handle = stack.executor(variant_cache_dir=tmp_path / "variants", tier_budgets={"disk": 0})
    runtime = handle.servicer.runtime

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(integrity, "save_file", disk_full)
    plan = Plan.uniform(runtime.num_layers, runtime.num_experts, Precision.INT4, "cpu")
    with ExecutorClient(address(handle.port)) as client:
        client.apply_plan(plan)
        assert client.info().plan == plan
        assert client.complete("hello").text is not None
    assert not list(runtime.factory.directory.glob("*.tmp"))  # no half-written file left behind


def test_a_disk_plan_that_does_not_fit_the_free_space_is_refused_first(
    stack, profile_file, tmp_path, monkeypatch
):
    handle = stack.executor(variant_cache_dir=tmp_path / "variants", tier_budgets={"disk": 1 << 40})
    runtime = handle.servicer.runtime
    monkeypatch.setattr(disk_room.shutil, "disk_usage", lambda path: Usage(1 << 30, 1 << 30, 1 << 20))
    plan = Plan.uniform(runtime.num_layers, runtime.num_experts, Precision.INT8, "disk")
    with ExecutorClient(address(handle.port)) as client:
        before = client.info().plan
        files = set(runtime.factory.directory.glob("*"))
        with pytest.raises(OverBudget, match="filesystem has 1048576 B free"):
            client.apply_plan(plan)
        assert client.info().plan == before
        assert set(runtime.factory.directory.glob("*")) == files


def test_a_cache_dir_that_cannot_be_created_is_a_clear_start_up_error(tmp_path, tiny_model):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache's parent should be")
    with pytest.raises(ValueError, match=r"variant cache .* is not a directory"):
        ExecutorServerConfig(model_dir=tiny_model, variant_cache_dir=blocker / "cache")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "moeqos.cli.main",
            "executor",
            "--model",
            str(tiny_model),
            "--listen",
            "127.0.0.1:0",
            "--variant-cache",
            str(blocker / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 2 and "is not a directory" in run.stderr and "Traceback" not in run.stderr
