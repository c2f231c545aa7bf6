"""int3/int2 experts through their variant files (issue 18): the file holds the bit-packed codes, bf16
scales and int8 zero points, and an expert read back from it is the expert that was quantized."""

from __future__ import annotations

import pytest
import torch
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision, expert_bytes
from moeqos.executor.quant import QuantExpert
from moeqos.executor.variants import BIT_PACKED_FORMAT

from tests.executor.tiny import EXPERTS, LAYERS, prompt_ids


@pytest.mark.parametrize("precision", [Precision.INT2, Precision.INT3])
def test_a_disk_tier_expert_round_trips_through_its_file(make_runtime, precision: Precision) -> None:
    runtime = make_runtime(disk_pool_slots=2)
    ids = prompt_ids(6)
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, precision.value, "cpu"))
    in_memory = runtime.forward_logits(ids)
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, precision.value, "disk"))
    key = (1, 2, precision, 64)
    path = runtime.factory.path(key)
    assert path.name.endswith(f".b{precision.bits}v{BIT_PACKED_FORMAT}.safetensors")
    state = runtime.factory.read_state(path)
    assert state["w13.zeros"].dtype == state["w2.zeros"].dtype == torch.int8
    stored = sum(t.numel() * t.element_size() for name, t in state.items() if not name.endswith("shape"))
    assert stored == expert_bytes(*runtime.shape, precision)
    loaded, _ = runtime.factory.load(key, "cpu")
    quantized = QuantExpert.from_weights(*runtime.factory.read_weights(1, 2), precision)
    for name in ("w13", "w2"):
        a, b = getattr(loaded, name).portable(), getattr(quantized, name).portable()
        assert torch.equal(a.values, b.values) and torch.equal(a.scales, b.scales)  # type: ignore[arg-type]
        assert torch.equal(a.zeros, b.zeros)  # type: ignore[arg-type]
    torch.testing.assert_close(runtime.forward_logits(ids), in_memory)  # same bytes, read from disk
