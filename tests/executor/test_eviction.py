"""The disk tier: the slot pool's LRU bookkeeping, alone and inside a running model."""

from __future__ import annotations

import ctypes
import mmap
import sys
from pathlib import Path

import pytest
import torch
from moeqos.core.plan import Plan
from moeqos.executor.eviction import LruPolicy, SlotPool
from moeqos.executor.loader import observing

from tests.executor.tiny import EXPERTS, LAYERS, prompt_ids


class Recorder:
    """A pool over string keys whose loads are recorded (value = key upper-cased, 10 bytes each)."""

    def __init__(self, slots: int) -> None:
        self.pool: SlotPool[str, str] = SlotPool(slots, LruPolicy())
        self.loads: list[str] = []

    def access(self, key: str) -> str:
        return self.pool.get(key, lambda: self._load(key))

    def _load(self, key: str) -> tuple[str, int]:
        self.loads.append(key)
        return key.upper(), 10


def test_lru_pool_follows_a_scripted_sequence() -> None:
    recorder = Recorder(2)
    pool, loads = recorder.pool, recorder.loads
    sequence = ["a", "b", "a", "c", "b", "a", "a", "c"]
    results = [recorder.access(k) for k in sequence]
    assert results == [k.upper() for k in sequence]
    # a miss, b miss, a hit, c miss (evicts b), b miss (evicts a), a miss (evicts c), a hit, c miss (evicts b)
    assert loads == ["a", "b", "c", "b", "a", "c"]
    assert (pool.stats.hits, pool.stats.misses, pool.stats.evictions) == (2, 6, 4)
    assert pool.stats.bytes_loaded == 60
    assert sorted(pool.resident()) == ["a", "c"]


def test_pool_never_exceeds_its_slots_and_discard_frees_one() -> None:
    recorder = Recorder(3)
    pool = recorder.pool
    for i in range(50):
        recorder.access(str(i % 7))
        assert len(pool) <= 3
    resident = pool.resident()
    pool.discard(resident[0])
    assert len(pool) == 2 and resident[0] not in pool.resident()
    pool.discard("not-there")
    assert len(pool) == 2


def test_disk_tier_in_a_running_model(make_runtime) -> None:
    runtime = make_runtime(disk_pool_slots=3)
    ids = prompt_ids(6)
    on_cpu = Plan.uniform(LAYERS, EXPERTS, "int8", "cpu")
    runtime.apply_plan(on_cpu)
    expected = runtime.forward_logits(ids)
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, "int8", "disk"))
    accesses = _expert_accesses(runtime, ids) + _expert_accesses(runtime, ids[:, :1])
    stats = runtime.store_stats()
    hits, misses = _simulate_lru(accesses, 3)
    assert (stats.hits, stats.misses) == (hits, misses)
    assert stats.resident_slots == min(3, len(set(accesses)))
    variant_file = runtime.factory.path((0, 0, on_cpu[0, 0].precision, 64))
    assert stats.bytes_moved == misses * variant_file.stat().st_size
    torch.testing.assert_close(runtime.forward_logits(ids), expected)  # same quantized bytes, read from disk


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-cache residency via Linux mincore")
def test_uncached_disk_reads_leave_no_pages_behind(make_runtime) -> None:
    """`disk_reads=uncached`: a miss reads the file, keeps its own copy, and the file leaves the page cache."""
    runtime = make_runtime(disk_pool_slots=2, disk_reads="uncached")
    ids = prompt_ids(6)
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, "int8", "cpu"))
    expected = runtime.forward_logits(ids)
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, "int8", "disk"))
    logits = runtime.forward_logits(ids)
    files = sorted(runtime.factory.directory.glob("*.int8.*.safetensors"))
    assert runtime.store_stats().misses > 0 and files
    mapped = Path("/proc/self/maps").read_text()
    assert not [f for f in files if str(f) in mapped]  # slots own their memory, not the file's pages
    assert max(resident_pages(f) for f in files) == 0
    torch.testing.assert_close(logits, expected)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-cache residency via Linux mincore")
def test_cached_disk_reads_leave_the_pages_to_the_os(make_runtime) -> None:
    """The contrast that makes the test above meaningful: by default the read pages stay cached."""
    runtime = make_runtime(disk_pool_slots=2)
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, "int8", "disk"))
    runtime.forward_logits(prompt_ids(6))
    files = sorted(runtime.factory.directory.glob("*.int8.*.safetensors"))
    assert max(resident_pages(f) for f in files) > 0


def test_int4_disk_experts_are_read_back_in_the_kernel_layout(make_runtime, tmp_path) -> None:
    """Installing the plan writes the packed files (no miss writes one); a later executor on the same
    cache loads them without the portable files, and computes the same logits as with every expert
    resident."""
    cache = tmp_path / "shared-variants"
    runtime = make_runtime(disk_pool_slots=2, variant_cache_dir=cache)
    ids = prompt_ids(6)
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, "int4", "cpu"))
    expected = runtime.forward_logits(ids)
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, "int4", "disk"))
    assert len(list(runtime.factory.directory.glob("*.int4.g64.cpu-*.safetensors"))) == LAYERS * EXPERTS
    torch.testing.assert_close(runtime.forward_logits(ids), expected)
    runtime.close()

    again = make_runtime(
        plan=Plan.uniform(LAYERS, EXPERTS, "int4", "disk"), disk_pool_slots=2, variant_cache_dir=cache
    )
    for portable in again.factory.directory.glob("*.int4.g64.safetensors"):
        portable.write_bytes(b"not a safetensors file")  # any read of these would fail
    torch.testing.assert_close(again.forward_logits(ids), expected)
    assert again.store_stats().misses > 0


def resident_pages(path: Path) -> int:
    """Pages of `path` in the OS page cache: Linux mincore over a fresh read-only mapping of the file."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    vector = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    with open(path, "rb") as handle:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, handle.fileno(), 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            if libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            libc.munmap(address, size)
    return sum(v & 1 for v in vector)


def _expert_accesses(runtime, ids: torch.Tensor) -> list[tuple[int, int]]:
    """Run one forward pass; the (layer, expert) calls it makes, in order (experts ascending per layer)."""
    accesses: list[tuple[int, int]] = []

    def observe(layer: int, hidden: torch.Tensor, index: torch.Tensor) -> None:
        accesses.extend((layer, e) for e in torch.unique(index).tolist())

    with observing(runtime.lm, runtime.adapter, observe):
        runtime.forward_logits(ids)
    return accesses


def _simulate_lru(accesses: list[tuple[int, int]], slots: int) -> tuple[int, int]:
    resident: list[tuple[int, int]] = []
    hits = misses = 0
    for key in accesses:
        if key in resident:
            hits += 1
            resident.remove(key)
        else:
            misses += 1
            resident = resident[-(slots - 1) :] if len(resident) >= slots else resident
        resident.append(key)
    return hits, misses
