"""Every `QuantLinear` kernel path against the pure-PyTorch reference, over a grid of shapes (some the
device ops take, some they do not), precisions, group sizes and activation dtypes."""

from __future__ import annotations

import zlib

import pytest
import torch
from moeqos.core.precision import Precision, matrix_bytes
from moeqos.executor.quant import QuantLinear, quantize_linear
from moeqos.executor.quant.onednn_kernels import packed_bf16_fits
from moeqos.executor.quant.reference import (
    kernel_error_bound,
    quantize_dequantize,
    reference_linear,
    relative_error,
)

# (out N, in K, group size, kernel expected for int8, kernel expected for int4/int3/int2)
SHAPES = [
    (64, 128, 64, "Int8CpuKernel", "Int4CpuKernel"),
    (64, 128, 32, "Int8CpuKernel", "Int4CpuKernel"),
    (32, 256, 128, "Int8CpuKernel", "Int4CpuKernel"),
    (96, 576, 64, "Int8CpuKernel", "Int4CpuKernel"),  # the default model's hidden size as K
    (48, 96, 64, "Int8CpuKernel", "DequantKernel"),  # K not a multiple of the group
    (40, 128, 64, "Int8CpuKernel", "DequantKernel"),  # N not a multiple of 16
    (16, 48, 32, "DequantKernel", "DequantKernel"),  # K too short for the int8 op's vectors
    (20, 70, 64, "DequantKernel", "DequantKernel"),
    (1, 1, 64, "DequantKernel", "DequantKernel"),
]
ACTIVATIONS = [torch.float32, torch.bfloat16, torch.float16]


def generator(*case: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


def expected_kernel(precision: Precision, shape: tuple[int, int, int, str, str]) -> str:
    """The kernel column of SHAPES; a precision naming its own group size fits the int4 op when N is a
    multiple of 16 and its group divides K; int3/int2 take the bit-packed twin of the int4 kernel; bf16
    takes oneDNN's prepacked kernel where this CPU computes bf16 natively."""
    rows, cols, _, int8_kernel, int4_kernel = shape
    if precision.is_float:
        packed = packed_bf16_fits(precision, torch.device("cpu"))
        return "PackedBf16CpuKernel" if packed else "FloatKernel"
    if precision == Precision.INT8:
        return int8_kernel
    if precision.group_size is not None:
        fits = rows % 16 == 0 and cols % precision.group_size == 0
        int4_kernel = "Int4CpuKernel" if fits else "DequantKernel"
    if precision.is_bit_packed:
        return {"Int4CpuKernel": "UnpackInt4Kernel", "DequantKernel": "UnpackDequantKernel"}[int4_kernel]
    return int4_kernel


@pytest.mark.parametrize("dtype", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("precision", list(Precision))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}g{s[2]}")
def test_kernel_matches_reference(
    shape: tuple[int, int, int, str, str], precision: Precision, dtype: torch.dtype
) -> None:
    rows, cols, group_size = shape[:3]
    gen = generator(shape, precision, dtype)
    weight = torch.randn(rows, cols, generator=gen)  # [N, K]
    x = torch.randn(2, 3, cols, generator=gen).to(dtype)  # [B, T, K]
    linear = quantize_linear(weight, precision, group_size)
    assert type(linear.kernel).__name__ == expected_kernel(precision, shape)

    y = linear(x)  # [B, T, N]
    y_ref = reference_linear(x, quantize_dequantize(weight, precision, group_size))
    assert y.shape == (2, 3, rows) and y.dtype == dtype
    assert relative_error(y, y_ref) <= kernel_error_bound(precision, dtype)


@pytest.mark.parametrize("tokens", [0, 37])
@pytest.mark.parametrize("precision", [Precision.BF16, Precision.INT8, Precision.INT4])
def test_kernel_handles_empty_and_prefill_batches(precision: Precision, tokens: int) -> None:
    gen = generator("tokens", precision, tokens)
    weight = torch.randn(64, 128, generator=gen)  # [N, K]
    x = torch.randn(tokens, 128, generator=gen)  # [M, K]
    linear = quantize_linear(weight, precision, 64)
    y = linear(x)
    assert y.shape == (tokens, 64)
    if tokens:
        y_ref = reference_linear(x, quantize_dequantize(weight, precision, 64))
        assert relative_error(y, y_ref) <= kernel_error_bound(precision, x.dtype)


@pytest.mark.parametrize("precision", list(Precision))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}g{s[2]}")
def test_module_computes_with_the_reference_weight(
    shape: tuple[int, int, int, str, str], precision: Precision
) -> None:
    rows, cols, group_size = shape[:3]
    weight = torch.randn(rows, cols, generator=generator("dequant", shape, precision))
    linear = quantize_linear(weight, precision, group_size)
    # Exact equality: recovering codes from a kernel's packed layout must lose nothing.
    assert torch.equal(linear.dequantize(), quantize_dequantize(weight, precision, group_size))
    assert linear.nbytes() == matrix_bytes(rows, cols, precision, group_size)
    assert (linear.out_features, linear.in_features) == (rows, cols)
    assert linear.group_size == precision.group(group_size)


@pytest.mark.parametrize("precision", list(Precision))
@pytest.mark.parametrize("shape", [(64, 128), (20, 71)], ids=str)
def test_state_and_relaid_copies_compute_identically(shape: tuple[int, int], precision: Precision) -> None:
    gen = generator("state", shape, precision)
    weight = torch.randn(*shape, generator=gen)
    x = torch.randn(4, shape[1], generator=gen)
    linear = quantize_linear(weight, precision, 32)
    rebuilt = QuantLinear.from_state(linear.to_state(), precision, 32, "cpu")
    relaid = QuantLinear(linear.portable(), "cpu")  # what to_device does for another device
    assert torch.equal(rebuilt(x), linear(x))
    assert torch.equal(relaid(x), linear(x))
    assert linear.to_device("cpu") is linear


def test_precision_may_be_given_by_name() -> None:
    linear = quantize_linear(torch.randn(16, 64), "int4", 32)  # type: ignore[arg-type]
    assert linear.precision == Precision.INT4
