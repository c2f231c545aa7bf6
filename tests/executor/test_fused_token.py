"""`routed_token` (one decode token's experts computed together) against the module path and the
pure-torch reference, for every precision and kernel, and the store's decode lookup across plan switches."""

from __future__ import annotations

import zlib

import pytest
import torch
from moeqos.core.plan import Assignment, Plan
from moeqos.core.precision import Precision
from moeqos.core.tier import DISK
from moeqos.executor.quant import QuantExpert
from moeqos.executor.quant.fused import mix, routed_token
from moeqos.executor.quant.reference import (
    kernel_error_bound,
    reference_quant_expert_forward,
    relative_error,
)
from moeqos.executor.store import ExpertStore

# (hidden H, intermediate I, group size): the CPU int8/int4 kernels' shapes, the default model's, and
# one no device kernel takes (dequantize + F.linear).
SHAPES = [(128, 256, 64), (576, 1536, 64), (70, 50, 64)]


def expert_weights(hidden: int, inter: int, *case: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(zlib.crc32(repr((hidden, inter, *case)).encode()))
    w1 = torch.randn(inter, hidden, generator=gen) / hidden**0.5  # [I, H]
    w2 = torch.randn(hidden, inter, generator=gen) / inter**0.5  # [H, I]
    w3 = torch.randn(inter, hidden, generator=gen) / hidden**0.5  # [I, H]
    return w1, w2, w3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("precision", list(Precision))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_routed_token_is_the_module_path_bit_for_bit(shape, precision, dtype):
    hidden, inter, group_size = shape
    weights = [expert_weights(hidden, inter, precision, k) for k in range(3)]
    experts = [QuantExpert.from_weights(*w, precision, group_size) for w in weights]
    gen = torch.Generator().manual_seed(hidden)
    x = torch.randn(1, hidden, generator=gen).to(dtype)  # [1, H]
    mixing = torch.softmax(torch.randn(1, 3, generator=gen), dim=-1)  # [1, K] fp32, as routed

    y = routed_token(experts, x, mixing)  # [1, H]

    assert y.shape == (1, hidden) and y.dtype == dtype
    assert torch.equal(y, mix([expert(x) for expert in experts], mixing))
    reference = sum(
        mixing[0, k] * reference_quant_expert_forward(*w, x, precision, group_size)
        for k, w in enumerate(weights)
    )
    assert relative_error(y, reference) <= 2 * kernel_error_bound(precision, dtype)


def test_routed_token_mixes_precisions():
    """A token's experts may be in different precisions (one per-expert plan); each keeps its kernel."""
    precisions = [Precision.BF16, Precision.INT8, Precision.INT4]
    weights = [expert_weights(128, 256, p) for p in precisions]
    experts = [QuantExpert.from_weights(*w, p) for w, p in zip(weights, precisions, strict=True)]
    x = torch.randn(1, 128, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    mixing = torch.tensor([[0.5, 0.3, 0.2]])
    assert torch.equal(routed_token(experts, x, mixing), mix([e(x) for e in experts], mixing))


class DiskFactory:
    """Just enough of a VariantFactory for a disk-tier expert: `load` hands out a prebuilt module."""

    def __init__(self, modules: dict[tuple[int, int], dict[Precision, QuantExpert]]) -> None:
        self.modules = modules

    def load(self, key: tuple[int, int, Precision, int], device: str) -> tuple[QuantExpert, int]:
        layer, expert, precision, _ = key
        return self.modules[(layer, expert)][precision], 0


def reassigned(plan: Plan, key: tuple[int, int], assignment: Assignment) -> Plan:
    rows = [list(row) for row in plan.assignments]
    rows[key[0]][key[1]] = assignment
    return Plan(tuple(tuple(row) for row in rows), plan.group_size)


def test_store_decode_lookup_follows_plan_switches():
    """`run_token` computes device-tier experts together and others one by one (same result), and a
    plan switch rewrites the lookup only for the experts it changed."""
    layers, num_experts, hidden, inter = 2, 3, 64, 96
    modules = {
        (layer, expert): {
            p: QuantExpert.from_weights(*expert_weights(hidden, inter, layer, expert), p)
            for p in (Precision.BF16, Precision.INT8)
        }
        for layer in range(layers)
        for expert in range(num_experts)
    }
    store = ExpertStore(DiskFactory(modules), "cpu", "compute", slots=2)  # type: ignore[arg-type]
    first = Plan.uniform(layers, num_experts, Precision.BF16, "cpu")
    store.install(first, {key: m[Precision.BF16] for key, m in modules.items()})
    x = torch.randn(1, hidden, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    mixing = torch.tensor([[0.75, 0.25]])

    def expected(layer: int, experts: list[int], plan: Plan) -> torch.Tensor:
        return mix([modules[(layer, e)][plan[(layer, e)].precision](x) for e in experts], mixing)

    assert torch.equal(store.run_token(1, [2, 0], x, mixing), expected(1, [2, 0], first))
    unchanged = store._on_device[0][0]

    second = reassigned(first, (1, 2), Assignment(Precision.INT8, "cpu"))
    store.install(second, {(1, 2): modules[(1, 2)][Precision.INT8]})
    assert store._on_device[0][0] is unchanged
    assert store._on_device[1][2] is modules[(1, 2)][Precision.INT8]
    assert torch.equal(store.run_token(1, [2, 0], x, mixing), expected(1, [2, 0], second))

    third = reassigned(second, (1, 0), Assignment(Precision.INT8, DISK))
    store.install(third, {})
    assert store._on_device[1][0] is None
    assert torch.equal(store.run_token(1, [2, 0], x, mixing), expected(1, [2, 0], third))
    assert store.stats().misses == 1  # the disk-tier expert went through the slot pool
