"""Damaged variant files (issue 16, case 1): flipped bytes, random data, a truncated file and a file
deleted under a running disk-tier plan are never served. Each is found by its content hash, rebuilt
from the checkpoint, counted in GetInfo, and the output stays what it was; when the checkpoint cannot
rebuild it either, the call fails with DATA_LOSS (never INTERNAL)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from moeqos.client import ExecutorClient, Sampling
from moeqos.core.errors import DataLoss
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor.integrity import DamagedFile, VerifiedFiles, read_verified, save_with_digest
from safetensors.torch import save_file

from tests.service.service_harness import address

GREEDY = Sampling(max_tokens=12, temperature=0.0)
PROMPT = "the quick brown fox"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    half = len(data) // 2
    for i in range(64):  # 64 bytes spread over the file's second half (the header is at its start)
        data[half + (i * 7) % half] ^= 0xFF
    path.write_bytes(bytes(data))


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete(path: Path) -> None:
    path.unlink()


def _verifies(path: Path) -> bool:
    try:
        return bool(read_verified(path))
    except DamagedFile:
        return False


DAMAGES: dict[str, Callable[[Path], None]] = {
    "flipped": _flip,
    "random": _random,
    "truncated": _truncate,
    "deleted": _delete,
}


def _disk_executor(stack, tmp_path: Path, precision: Precision = Precision.INT8):
    """An executor serving every expert in `precision` from disk, one slot (every expert use reads its
    file)."""
    handle = stack.executor(variant_cache_dir=tmp_path / "variants", disk_pool_slots=1)
    runtime = handle.servicer.runtime
    plan = Plan.uniform(runtime.num_layers, runtime.num_experts, precision, "disk")
    return handle, runtime, plan


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_variant_files_are_rebuilt_not_served(stack, profile_file, tmp_path, damage):
    handle, runtime, plan = _disk_executor(stack, tmp_path)
    with ExecutorClient(address(handle.port)) as client:
        client.apply_plan(plan)
        text = client.complete(PROMPT, GREEDY).text
        files = sorted(runtime.factory.directory.glob("L*.int8.*.safetensors"))
        assert len(files) == runtime.num_layers * runtime.num_experts
        for path in files:
            DAMAGES[damage](path)
        assert client.complete(PROMPT, GREEDY).text == text  # the same output, not silently changed
        found = client.info()
        # every expert read since was damaged (the one left in the slot, or one never routed, was not)
        assert 1 <= found.damaged_files <= len(files)
        assert found.integrity.startswith(f"{found.damaged_files} damaged, {found.damaged_files} mended")
        assert client.complete(PROMPT, GREEDY).text == text
        assert client.info().damaged_files >= found.damaged_files
        assert sum(_verifies(path) for path in files) == found.damaged_files  # those read were rewritten


@pytest.mark.parametrize("precision", [Precision.INT3, Precision.INT2])
def test_damaged_bit_packed_files_are_rebuilt_not_served(stack, profile_file, tmp_path, precision):
    """The bit-packed int3/int2 files (issue 18) carry the same content hash: flipped bytes in the packed
    codes are found and mended like any other format's."""
    handle, runtime, plan = _disk_executor(stack, tmp_path, precision)
    with ExecutorClient(address(handle.port)) as client:
        client.apply_plan(plan)
        text = client.complete(PROMPT, GREEDY).text
        files = sorted(
            runtime.factory.directory.glob(f"L*.{precision.value}.g*.b{precision.bits}v*.safetensors")
        )
        assert len(files) == runtime.num_layers * runtime.num_experts
        for path in files:
            _flip(path)
        assert client.complete(PROMPT, GREEDY).text == text
        assert client.info().damaged_files >= 1


def test_unrebuildable_file_is_data_loss_not_internal(stack, profile_file, tmp_path, monkeypatch):
    handle, runtime, plan = _disk_executor(stack, tmp_path)

    def checkpoint_gone(*args, **kwargs):
        raise OSError("checkpoint unreadable")

    with ExecutorClient(address(handle.port)) as client:
        client.apply_plan(plan)
        _truncate(runtime.factory.path((0, 0, Precision.INT8, plan.group_size)))
        monkeypatch.setattr(runtime.factory, "read_weights", checkpoint_gone)
        with pytest.raises(DataLoss, match=r"L0\.E0.*checkpoint cannot rebuild it"):
            client.complete(PROMPT, GREEDY)
        info = client.info()
        assert info.damaged_files >= 1 and "checkpoint cannot rebuild it" in info.integrity
        assert str(tmp_path) not in info.integrity  # file names only: no host paths to anonymous readers
        monkeypatch.undo()
        assert client.complete(PROMPT, GREEDY).text  # mended at the next use once the checkpoint reads


def test_read_verified_refuses_files_without_or_with_a_wrong_hash(tmp_path):
    state = {"values": torch.arange(12, dtype=torch.int8).reshape(3, 4), "shape": torch.tensor([3, 4])}
    good, unhashed = tmp_path / "good.safetensors", tmp_path / "unhashed.safetensors"
    save_with_digest(state, good)
    save_file(state, str(unhashed))
    known = VerifiedFiles()
    assert torch.equal(read_verified(good, known)["values"], state["values"])
    assert torch.equal(read_verified(good, known)["values"], state["values"])  # trusted: unchanged
    with pytest.raises(DamagedFile, match="no content hash"):
        read_verified(unhashed)
    _flip(good)  # a write: the file is hashed again although it was verified before
    with pytest.raises(DamagedFile, match=r"good\.safetensors: (content hash mismatch|unreadable)"):
        read_verified(good, known)
    with pytest.raises(DamagedFile, match="missing"):
        read_verified(tmp_path / "absent.safetensors")
