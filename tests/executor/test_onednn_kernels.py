"""bf16 weights in oneDNN's prepacked layout (moeqos.executor.quant.onednn_kernels): the same product as
torch's `mm` on the plain weight, the plain weight recovered exactly, and the dense part computing with
it from load where the native kernels are off, and the plain layout kept where they are built (the C
decode step reads only that). Skipped where this CPU has no native oneDNN bf16 (the kernel is then never
chosen; the fallback tests run everywhere)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from moeqos.core.dense import DenseElement
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor.quant import QuantizedWeight, QuantLinear, onednn_kernels, quantize_linear
from moeqos.executor.quant.kernel import FloatKernel
from moeqos.executor.quant.onednn_kernels import PackedBf16CpuKernel, packed_bf16_fits
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.sampling import SamplingParams
from torch import nn

from tests.executor.tiny import EXPERTS, LAYERS, prompt_ids

CPU = torch.device("cpu")
native = pytest.mark.skipif(not onednn_kernels._onednn_bf16(), reason="no native oneDNN bf16 on this CPU")


@pytest.fixture
def packing(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 weights built in the packed layout: the native kernels taken as not built."""
    monkeypatch.setattr(onednn_kernels, "_native_kernels_built", lambda: False)


def bf16_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)  # [N, K]


@native
@pytest.mark.parametrize("rows", [1, 2, 16, 48])
@pytest.mark.parametrize("shape", [(64, 32), (192, 576), (576, 1536)])
def test_the_packed_product_equals_mm_on_the_plain_weight(rows: int, shape: tuple[int, int]) -> None:
    weight = bf16_weight(*shape)  # [N, K]
    kernel = PackedBf16CpuKernel(QuantizedWeight(Precision.BF16, weight))
    x = torch.randn(rows, shape[1], generator=torch.Generator().manual_seed(rows)).to(
        torch.bfloat16
    )  # [M, K]
    if rows <= 16:
        assert torch.equal(kernel.matmul(x), torch.mm(x, weight.t()))
    else:  # `mm` may take another kernel (AMX) here, summing in another order: one bf16 rounding apart
        torch.testing.assert_close(kernel.matmul(x), torch.mm(x, weight.t()), rtol=2**-7, atol=0)


@native
def test_strided_rows_and_other_activation_dtypes_compute_in_bf16() -> None:
    weight = bf16_weight(64, 32)  # [N, K]
    kernel = PackedBf16CpuKernel(QuantizedWeight(Precision.BF16, weight))
    wide = torch.randn(3, 64).to(torch.bfloat16)
    strided = wide[:, ::2]  # [3, 32], row stride 64
    assert torch.equal(kernel.matmul(strided), torch.mm(strided.contiguous(), weight.t()))
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(2, 32).to(dtype)  # [M, K]
        y = kernel.matmul(x)
        assert y.dtype == dtype
        assert torch.equal(y, torch.mm(x.to(torch.bfloat16), weight.t()).to(dtype))


@native
def test_the_plain_weight_comes_back_exactly_for_the_disk_cache_and_device_moves(packing: None) -> None:
    weight = torch.randn(48, 64)  # [N, K] fp32, quantized (cast) to bf16
    linear = quantize_linear(weight, Precision.BF16)
    assert isinstance(linear.kernel, PackedBf16CpuKernel)
    assert torch.equal(linear.portable().values, weight.to(torch.bfloat16))
    again = QuantLinear.from_state(linear.to_state(), Precision.BF16)
    x = torch.randn(1, 64).to(torch.bfloat16)
    assert isinstance(again.kernel, PackedBf16CpuKernel) and torch.equal(again(x), linear(x))
    assert linear.nbytes() == 48 * 64 * 2  # the byte contract: the packed copy is the only one


def test_without_native_onednn_bf16_the_float_kernel_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onednn_kernels, "_onednn_bf16", lambda: False)
    assert not packed_bf16_fits(Precision.BF16, CPU)
    linear = quantize_linear(torch.randn(32, 64), Precision.BF16)
    assert isinstance(linear.kernel, FloatKernel)
    assert not packed_bf16_fits(Precision.FP32, CPU)


def test_where_the_native_kernels_are_built_bf16_stays_plain_for_the_c_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(onednn_kernels, "_onednn_bf16", lambda: True)
    monkeypatch.setattr(onednn_kernels, "_native_kernels_built", lambda: True)
    assert not packed_bf16_fits(Precision.BF16, CPU)
    assert isinstance(quantize_linear(torch.randn(32, 64), Precision.BF16).kernel, FloatKernel)


@native
def test_the_dense_part_computes_with_packed_projections_from_load(
    make_runtime: Callable[..., ExecutorRuntime], packing: None
) -> None:
    """At load every bias-free bf16 projection is a packed `QuantLinear` (its plain weight gone: no
    parameter left in the slot); a tied head keeps the embedding matrix; decoding works and a plan that
    re-quantizes the attention and comes back gives the same tokens."""
    runtime = make_runtime(Plan.uniform(LAYERS, EXPERTS, Precision.BF16, "cpu"), dense_precision="bf16")
    projections = runtime.dense.slots[DenseElement.ATTN]
    assert projections and all(isinstance(slot.module, QuantLinear) for slot in projections)
    assert all(isinstance(slot.module.kernel, PackedBf16CpuKernel) for slot in projections)
    assert all(not list(slot.parameters()) for slot in projections)
    (head,) = runtime.dense.slots[DenseElement.HEAD]
    if runtime.dense.tied:
        assert type(head.module) is nn.Linear
        assert head.module.weight is runtime.lm.get_input_embeddings().weight
    prompt = prompt_ids(10)[0].tolist()
    before = greedy(runtime, prompt)
    bf16 = Plan.uniform(LAYERS, EXPERTS, Precision.BF16, "cpu")
    runtime.apply_plan(bf16.with_dense(((DenseElement.ATTN, Precision.INT8),)))
    assert not any(isinstance(slot.module.kernel, PackedBf16CpuKernel) for slot in projections)
    runtime.apply_plan(bf16)
    assert all(isinstance(slot.module.kernel, PackedBf16CpuKernel) for slot in projections)
    assert greedy(runtime, prompt) == before


def greedy(runtime: ExecutorRuntime, prompt: list[int]) -> list[int]:
    events = runtime.generate(prompt, SamplingParams(max_tokens=6, temperature=0.0))
    return [e.token_id for e in events if e.token_id is not None]
