"""Identical experts of a layer are quantized once (moeqos.executor.twin_experts): on an upcycled tiny
checkpoint a plan switch to int4 quantizes one expert per layer, the layer's experts share that variant
and compute what quantizing each one would; distinct experts are each quantized, and a twin whose
variant was dropped is quantized again."""

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
