"""Broken parts: a plan switch that fails halfway (an injected quantization error for one expert), a
Deploy that fails on one of two executors, and corrupt or truncated checkpoints, at the runtime and at
the `moeqos executor` process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from moeqos.bench.cluster import ROOT
from moeqos.client import DeploySpec, ExecutorClient, PlannerClient, Sampling
from moeqos.core.errors import PlanApplyFailed
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.executor.checkpoint import CheckpointError
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.runtime import ExecutorRuntime

from tests.service.service_harness import address

GREEDY = Sampling(max_tokens=12, temperature=0.0)
BROKEN = "model.layers.1.block_sparse_moe.experts.2.w2.weight"
"""The tensor the checkpoint tests break (an expert's down projection, [H, I])."""


def test_plan_switch_failing_halfway_rolls_back(stack, profile_file, monkeypatch):
    handle = stack.executor(tier_budgets={"disk": 0})
    runtime = handle.servicer.runtime
    build, built = runtime.factory.build, []

    def fails_for_one_expert(variant, device):
        if variant[:2] == (1, 1):
            raise RuntimeError("injected quantization failure")
        built.append(variant)
        return build(variant, device)

    with ExecutorClient(address(handle.port)) as client:
        before = client.info().plan
        text = client.complete("the quick brown fox", GREEDY).text
        target = Plan.uniform(runtime.num_layers, runtime.num_experts, Precision.INT4, "cpu")
        monkeypatch.setattr(runtime.factory, "build", fails_for_one_expert)
        with pytest.raises(PlanApplyFailed, match=r"L1\.E1.*injected quantization failure"):
            client.apply_plan(target)
        assert len(built) == runtime.num_experts + 1  # layer 0 and L1.E0 were built: it failed halfway
        assert client.info().plan == before
        assert client.complete("the quick brown fox", GREEDY).text == text
        monkeypatch.undo()
        assert client.apply_plan(target).experts_changed == runtime.num_layers * runtime.num_experts
        assert client.info().plan == target


def test_deploy_failing_on_one_executor_changes_none(stack, profile_file, monkeypatch):
    """One executor's switch fails after the other's succeeded: the planner puts the first back, so a
    failed Deploy leaves every executor on the plan and standing target it had."""
    first, second = stack.executor(tier_budgets={"disk": 0}), stack.executor(tier_budgets={"disk": 0})
    planner = stack.planner()
    runtime = second.servicer.runtime

    def fails(variant, device):
        raise RuntimeError("injected quantization failure")

    monkeypatch.setattr(runtime.factory, "build", fails)
    addresses = [address(first.port), address(second.port)]
    every_expert_int8 = (PlacementRule("*", Precision.INT8, "cpu"),)  # a switch for both, whatever the costs
    specs = [
        DeploySpec(addr, QosTarget(objective=Objective.SPEED), pins=every_expert_int8) for addr in addresses
    ]
    with ExecutorClient(addresses[0]) as a, ExecutorClient(addresses[1]) as b:
        before = [(c.info().plan, c.info().standing_target) for c in (a, b)]
        with PlannerClient(address(planner.port)) as client, pytest.raises(PlanApplyFailed):
            client.deploy(specs)
        assert [(c.info().plan, c.info().standing_target) for c in (a, b)] == before
        monkeypatch.undo()
        with PlannerClient(address(planner.port)) as client:
            client.deploy(specs)
        assert all(
            c.info().plan != plan for c, (plan, _) in zip((a, b), before, strict=True)
        )  # it can deploy


def _copy(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "broken"))


def truncate(model: Path) -> Path:
    """Cut the weights file inside the tensor `BROKEN`: the header is intact, the data is short."""
    path = model / "model.safetensors"
    header = _header(path)
    start = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    begin, end = header[BROKEN]["data_offsets"]
    os.truncate(path, start + (begin + end) // 2)
    return path


def misshape(model: Path) -> Path:
    """Swap the two dimensions of `BROKEN` in the header (same bytes, wrong shape)."""
    path = model / "model.safetensors"
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    header[BROKEN]["shape"] = header[BROKEN]["shape"][::-1]
    text = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(raw[:8] + text.ljust(length, b" ") + raw[8 + length :])
    return path


def drop(model: Path) -> Path:
    """Remove `BROKEN` from the checkpoint."""
    from safetensors.torch import load_file, save_file

    path = model / "model.safetensors"
    tensors = load_file(str(path))
    del tensors[BROKEN]
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def _header(path: Path) -> dict:
    raw = path.read_bytes()
    return json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])


BREAKS = {"truncated": truncate, "misshapen": misshape, "missing": drop}


@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_broken_checkpoint_names_the_file_and_tensor(tiny_model, tmp_path, kind):
    model = _copy(tiny_model, tmp_path)
    path = BREAKS[kind](model)
    with pytest.raises(CheckpointError) as error:
        ExecutorRuntime.load(ExecutorConfig(model_dir=model))
    assert str(model) in str(error.value) and BROKEN in str(error.value), str(error.value)
    assert kind == "missing" or str(path) in str(error.value)


@pytest.mark.e2e
def test_executor_process_exits_with_the_checkpoint_error(tiny_model, tmp_path):
    model = _copy(tiny_model, tmp_path)
    path = misshape(model)
    argv = [
        sys.executable,
        "-m",
        "moeqos.cli.main",
        "executor",
        "--model",
        str(model),
        "--listen",
        "127.0.0.1:0",
    ]
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert str(path) in output and BROKEN in output, output[-2000:]
