"""Identical experts of a layer are quantized once (moeqos.executor.twin_experts): on an upcycled tiny
checkpoint a plan switch to int4 quantizes one expert per layer, the layer's experts share that variant
and compute what quantizing each one would, and their variant files are links to one file; distinct
experts are each quantized and written, and a twin whose variant was dropped is quantized again."""

from __future__ import annotations

import gc
from pathlib import Path

import torch
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.quant import QuantExpert
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.testing import make_tiny_mixtral

from tests.executor.tiny import EXPERTS, LAYERS, fp32_plan, upcycled


def _runtime(directory: Path, tmp_path: Path) -> ExecutorRuntime:
    config = ExecutorConfig(model_dir=directory, dense_precision="fp32", variant_cache_dir=None)
    return ExecutorRuntime.load(config, fp32_plan())


def _int4() -> Plan:
    return Plan.uniform(LAYERS, EXPERTS, Precision.INT4, "cpu")


def test_an_upcycled_layers_experts_share_one_quantization(tmp_path: Path) -> None:
    runtime = _runtime(upcycled(make_tiny_mixtral(tmp_path / "upcycled", seed=2)), tmp_path)
    factory = runtime.factory
    before = factory.quantized
    runtime.apply_plan(_int4())
    assert factory.quantized - before == LAYERS
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    for layer in range(LAYERS):
        variants = [factory.build((layer, e, Precision.INT4, 64), "cpu") for e in range(EXPERTS)]
        assert all(v is variants[0] for v in variants)
        w1, w2, w3 = factory.read_weights(layer, EXPERTS - 1)
        alone = QuantExpert.from_weights(w1, w2, w3, Precision.INT4, group_size=64, device="cpu")
        assert torch.equal(variants[0](x), alone(x))


def test_distinct_experts_and_dropped_twins_are_quantized_each(tmp_path: Path) -> None:
    distinct = _runtime(make_tiny_mixtral(tmp_path / "distinct", seed=2), tmp_path)
    before = distinct.factory.quantized
    distinct.apply_plan(_int4())
    assert distinct.factory.quantized - before == LAYERS * EXPERTS

    twins = _runtime(upcycled(make_tiny_mixtral(tmp_path / "twins", seed=2)), tmp_path).factory
    key = (0, 0, Precision.INT4, 64)
    first = twins.build(key, "cpu")
    assert twins.build((0, 1, Precision.INT4, 64), "cpu") is first  # alive: shared
    del first
    gc.collect()
    count = twins.quantized
    twins.build((0, 2, Precision.INT4, 64), "cpu")  # nothing holds the twin's variant: quantized again
    assert twins.quantized == count + 1


def test_a_twins_variant_file_is_a_link_to_the_file_written_for_its_layer(tmp_path: Path) -> None:
    model = upcycled(make_tiny_mixtral(tmp_path / "upcycled", seed=2))
    config = ExecutorConfig(model_dir=model, dense_precision="fp32", variant_cache_dir=tmp_path / "variants")
    runtime = ExecutorRuntime.load(config, fp32_plan())
    runtime.apply_plan(_int4())
    factory = runtime.factory
    for layer in range(LAYERS):
        files = [factory.path((layer, e, Precision.INT4, 64)) for e in range(EXPERTS)]
        assert len({f.stat().st_ino for f in files}) == 1  # one file, linked under every expert's name
        assert all(f.stat().st_nlink == EXPERTS for f in files)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    key = (1, EXPERTS - 1, Precision.INT4, 64)
    linked, _ = factory.load(key, "cpu")
    assert torch.equal(linked(x), factory.build((1, 0, Precision.INT4, 64), "cpu")(x))
    with open(factory.path(key), "r+b") as f:  # damage the shared inode: every name reads it damaged
        f.seek(-8, 2)
        f.write(b"\xff" * 8)
    rebuilt, read = factory.load(key, "cpu")
    assert read == 0 and torch.equal(rebuilt(x), linked(x))  # rebuilt from the checkpoint, a file of its own
    assert factory.path(key).stat().st_nlink == 1
    assert factory.integrity.status().damaged == 1
    twin, read = factory.load((1, 0, Precision.INT4, 64), "cpu")  # the twin's name reads the damage too
    assert read == 0 and torch.equal(twin(x), linked(x))
    assert factory.integrity.status().damaged == 2


def test_distinct_experts_files_are_written_each(tmp_path: Path) -> None:
    config = ExecutorConfig(
        model_dir=make_tiny_mixtral(tmp_path / "distinct", seed=2),
        dense_precision="fp32",
        variant_cache_dir=tmp_path / "variants",
    )
    runtime = ExecutorRuntime.load(config, fp32_plan())
    runtime.apply_plan(_int4())
    files = [runtime.factory.path((0, e, Precision.INT4, 64)) for e in range(EXPERTS)]
    assert len({f.stat().st_ino for f in files}) == EXPERTS


def test_twins_proved_once_are_not_read_again_in_another_precision(tmp_path: Path, monkeypatch) -> None:
    runtime = _runtime(upcycled(make_tiny_mixtral(tmp_path / "upcycled", seed=2)), tmp_path)
    factory = runtime.factory
    runtime.apply_plan(_int4())  # proves each layer's experts identical
    reads: list[tuple[int, int]] = []
    source_read = factory.read_weights
    monkeypatch.setattr(
        type(factory),
        "read_weights",
        lambda _, layer, expert: reads.append((layer, expert)) or source_read(layer, expert),
    )
    before = factory.quantized
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, Precision.INT8, "cpu"))
    assert factory.quantized - before == LAYERS
    assert len(reads) == LAYERS  # the first expert of each layer, to quantize it; its twins take its variant
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(5))
    w1, w2, w3 = source_read(1, EXPERTS - 1)
    alone = QuantExpert.from_weights(w1, w2, w3, Precision.INT8, group_size=64, device="cpu")
    assert torch.equal(factory.build((1, EXPERTS - 1, Precision.INT8, 64), "cpu")(x), alone(x))


def test_the_memory_cache_counts_a_shared_variant_once(tmp_path: Path) -> None:
    runtime = _runtime(upcycled(make_tiny_mixtral(tmp_path / "upcycled", seed=2)), tmp_path)
    factory = runtime.factory
    runtime.apply_plan(_int4())
    size = factory.build((0, 0, Precision.INT4, 64), "cpu").nbytes()
    runtime.apply_plan(fp32_plan())  # every int4 expert retired into the memory cache
    memory = factory.memory
    assert len(memory) == LAYERS * EXPERTS
    assert memory.used_bytes == LAYERS * size  # one variant per layer, held by all its keys
    for expert in range(EXPERTS - 1):  # the layer's variant is still held by its last key
        assert memory.take((0, expert, Precision.INT4, 64)) is not None
    assert memory.used_bytes == LAYERS * size
    memory.take((0, EXPERTS - 1, Precision.INT4, 64))
    assert memory.used_bytes == (LAYERS - 1) * size
    gc.collect()
    before = factory.quantized
    runtime.apply_plan(_int4())  # layer 0's variant is gone from the cache: quantized again, once
    assert factory.quantized - before == 1


def test_a_twins_disk_tier_files_are_links_to_its_layers(tmp_path: Path) -> None:
    model = upcycled(make_tiny_mixtral(tmp_path / "upcycled", seed=2))
    config = ExecutorConfig(model_dir=model, dense_precision="fp32", variant_cache_dir=tmp_path / "variants")
    factory = ExecutorRuntime.load(config, fp32_plan()).factory
    keys = [(0, e, Precision.INT4, 64) for e in range(EXPERTS)]
    held = factory.build(keys[0], "cpu")  # alive: the twins' builds share it
    for key in keys:
        factory.ensure_file(key, "cpu", remember=True)
    for path_of in (factory.path, lambda k: factory.packed_path(k, "cpu")):
        paths = [path_of(k) for k in keys]
        if paths[0] is None:  # no packed layout for this shape on this machine
            continue
        assert len({p.stat().st_ino for p in paths}) == 1
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(factory.load(keys[-1], "cpu")[0](x), held(x))
