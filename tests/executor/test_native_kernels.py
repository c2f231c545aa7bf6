"""The native CPU matmuls (moeqos.executor.quant.native) against fp32 products of the dequantized weights,
within the error their arithmetic allows, and their build, layout and fallbacks."""

from __future__ import annotations

import logging

import pytest
import torch
from moeqos.core.precision import Precision
from moeqos.executor.quant import cpu_kernels, native
from moeqos.executor.quant.packing import code_offset, pack_codes, unpack_nibble_bytes
from moeqos.executor.quant.reference import NATIVE_INT4_BOUND, relative_error
from moeqos.executor.quant.rtn import dequantize, quantize

pytestmark = pytest.mark.skipif(native.library() is None, reason="native kernels not built (no C compiler)")

SHAPES = [(64, 64), (50, 128), (3, 64), (256, 576)]
"""[N, K]: the tiny model's, an N that is no multiple of the four features computed together (and spans
two of the int4 kernel's 32-feature chunks), an N below four, an expert's."""
ROWS = [1, 3, 5, 17]


def _rows(count: int, cols: int, seed: int) -> torch.Tensor:
    """bf16 activations [count, cols] whose rows are strided (a view into a wider tensor), with outliers."""
    wide = torch.randn(count, cols + 32, generator=torch.Generator().manual_seed(seed))
    wide[:, 7] *= 20  # an outlier channel, as LLM activations have
    return wide.to(torch.bfloat16)[:, :cols]


def _activation_bound(x: torch.Tensor, weight: torch.Tensor, levels: int) -> torch.Tensor:
    """The most x's rounding to integers per 32-block (its largest value to `levels`: 127 for int8, 32767
    for int16) can move x @ weight.T, `weight` [N, K] the part of the weight that multiplies the rounded
    x: half a step on every element, through |weight|; [M, N]."""
    blocks = x.float().reshape(x.shape[0], -1, 32)  # [M, K/32, 32]
    half_step = (blocks.abs().amax(dim=2, keepdim=True) / (2 * levels)).expand_as(blocks).reshape(x.shape)
    return half_step @ weight.abs().t()


def _close(got: torch.Tensor, exact: torch.Tensor, slack: torch.Tensor) -> None:
    """got within slack plus its own bf16 rounding (2^-8 relative) and fp32 summation noise of exact."""
    allowed = slack + exact.abs() * 2**-8 + 1e-4 * exact.abs().max()
    excess = (got.float() - exact).abs() - allowed
    assert excess.max() <= 0, f"off by {excess.max():.3g} beyond the bound"


@pytest.mark.parametrize(("features", "cols"), SHAPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("precision", ["int4", "int4g32"])
def test_int4_matches_the_dequantized_product_within_the_activations_rounding(
    features, cols, rows, precision
):
    _check_int4(features, cols, rows, Precision(precision), 64)


@pytest.mark.parametrize(("features", "cols"), [(50, 128), (3, 256)])
def test_int4_with_groups_of_four_blocks(features, cols):
    """Groups of 128 take the block-scale table's general path (groups of 32 and 64 have vector ones)."""
    _check_int4(features, cols, 5, Precision.INT4, 128)


def _check_int4(features: int, cols: int, rows: int, precision: Precision, group: int) -> None:
    q = quantize(torch.randn(features, cols) * 0.05, precision, group)
    assert q.scales is not None and q.zeros is not None
    x = _rows(rows, cols, seed=rows)
    weight = dequantize(q)  # [N, K] fp32
    # the zero points multiply the exact sums of x; the codes x scales meet the rounded x
    scaled_codes = q.values.float() * q.scales.float().repeat_interleave(q.group_size, dim=1)  # [N, K]
    got = native.q4_mm(x, native.pack_q4(q.values), torch.stack([q.scales, q.zeros]), q.group_size)
    _close(got, x.float() @ weight.t(), _activation_bound(x, scaled_codes, 127))


@pytest.mark.parametrize(("features", "cols"), SHAPES)
@pytest.mark.parametrize("rows", ROWS)
def test_int8_matches_the_dequantized_product_within_the_activations_16_bit_rounding(features, cols, rows):
    q = quantize(torch.randn(features, cols) * 0.05, Precision.INT8)
    assert q.scales is not None
    x = _rows(rows, cols, seed=rows)
    weight = dequantize(q)
    got = native.q8_mm(x, q.values, q.scales)
    _close(got, x.float() @ weight.t(), _activation_bound(x, weight, 32767))


@pytest.mark.parametrize(("features", "cols"), SHAPES)
@pytest.mark.parametrize("rows", ROWS)
def test_bf16_is_the_fp32_product_of_the_bf16_operands(features, cols, rows):
    weight = torch.randn(features, cols).to(torch.bfloat16)
    x = _rows(rows, cols, seed=rows)
    got = native.bf16_mm(x, weight)
    _close(got, x.float() @ weight.float().t(), torch.zeros(()))


def test_q4_packing_round_trips_and_puts_code_32_in_the_high_nibble():
    codes = torch.randint(0, 16, (4, 128), dtype=torch.uint8)
    packed = native.pack_q4(codes)
    assert packed.shape == (4, 64)
    assert torch.equal(native.unpack_q4(packed), codes)
    assert int(packed[0, 0]) == int(codes[0, 0]) | int(codes[0, 32]) << 4


def test_an_int4_kernel_in_the_native_layout_reads_back_what_it_was_given(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "native_int4", lambda cols, group: True)
    q = quantize(torch.randn(64, 128), Precision.INT4, 64)
    kernel = cpu_kernels.Int4CpuKernel(q)
    assert kernel.native and kernel.scales_zeros.shape == (2, 64, 2)
    back = kernel.portable()
    assert torch.equal(back.values, q.values) and torch.equal(back.scales, q.scales)
    assert torch.equal(back.zeros, q.zeros)
    state = kernel.packed_state()
    again = cpu_kernels.Int4CpuKernel.from_packed(q.precision, 64, state["packed"], state["scales_zeros"])
    x = torch.randn(2, 128)
    assert torch.equal(again.matmul(x), kernel.matmul(x))
    with pytest.raises(ValueError, match="does not match"):
        cpu_kernels.Int4CpuKernel.from_packed(q.precision, 64, state["packed"], state["scales_zeros"][:1])


def test_the_native_layout_has_a_tag_of_its_own(monkeypatch):
    cpu_kernels.int4_layout_tag.cache_clear()
    monkeypatch.setattr(cpu_kernels, "native_int4", lambda cols, group: True)
    try:
        assert cpu_kernels.int4_layout_tag(64, 128) == "nat64v1"
    finally:
        cpu_kernels.int4_layout_tag.cache_clear()


@pytest.mark.parametrize(("torch_share", "native_chosen"), [(0.6, True), (1.5, True), (0.4, False)])
def test_torch_op_serves_only_where_it_is_more_than_twice_as_fast(monkeypatch, torch_share, native_chosen):
    """`preferred` with the probe's times faked: torch's op at 0.6x the native kernel's time still leaves
    the native kernel (whose weights the C decode step reads), at 0.4x it takes over."""
    from moeqos.executor.quant import gemv_paths

    def timer():
        return lambda calls: {"torch": torch_share * 1e-4, "native": 1e-4}

    monkeypatch.setattr(gemv_paths, "wall_timer", timer)
    native.preferred.cache_clear()
    try:
        assert native.preferred("int8") is native_chosen
    finally:
        native.preferred.cache_clear()


def test_switched_off_or_without_a_working_compiler_torch_serves(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("MOEQOS_HOME", str(tmp_path))
    native.library.cache_clear()
    native.preferred.cache_clear()
    try:
        monkeypatch.setenv(native.DISABLE_ENV, "0")
        assert native.library() is None and not native.preferred("int4")
        native.library.cache_clear()
        monkeypatch.delenv(native.DISABLE_ENV)
        monkeypatch.setenv("CC", "false")  # a compiler that always fails
        with caplog.at_level(logging.WARNING, logger=native.__name__):
            assert native.library() is None
        assert "native kernels not built" in caplog.text
    finally:
        native.library.cache_clear()
        native.preferred.cache_clear()
        monkeypatch.undo()
        assert native.library() is not None  # the machine's build again, for the tests that follow


def test_a_build_lands_in_the_cache_once(monkeypatch, tmp_path):
    monkeypatch.setenv("MOEQOS_HOME", str(tmp_path))
    compiler = native.compiler()
    assert compiler is not None
    built = native.build(compiler)
    assert built.is_file() and built.is_relative_to(tmp_path / "native")
    stamp = built.stat().st_mtime_ns
    assert native.build(compiler) == built and built.stat().st_mtime_ns == stamp


def test_an_int8_kernel_sends_a_few_rows_to_the_native_kernel_and_more_to_torchs_op(monkeypatch):
    monkeypatch.setattr(native, "preferred", lambda precision: True)
    q = quantize(torch.randn(64, 128), Precision.INT8)
    assert q.scales is not None
    kernel = cpu_kernels.Int8CpuKernel(q)
    few, many = _rows(native.FEW_ROWS, 128, seed=1), _rows(native.FEW_ROWS + 1, 128, seed=2)
    assert torch.equal(kernel.matmul(few), native.q8_mm(few, q.values, q.scales))
    torch_op = torch.ops.aten._weight_int8pack_mm(many.contiguous(), q.values, q.scales)
    assert torch.equal(kernel.matmul(many), torch_op)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_infinite_activation_comes_out_nan_not_a_finite_wrong_number(bad):
    q4 = quantize(torch.randn(8, 64), Precision.INT4, 64)
    q8 = quantize(torch.randn(8, 64), Precision.INT8)
    assert q4.scales is not None and q4.zeros is not None and q8.scales is not None
    x = torch.randn(2, 64).to(torch.bfloat16)
    x[1, 5] = bad
    for y in (
        native.q4_mm(x, native.pack_q4(q4.values), torch.stack([q4.scales, q4.zeros]), 64),
        native.q8_mm(x, q8.values, q8.scales),
    ):
        assert torch.isfinite(y[0]).all() and not torch.isfinite(y[1]).any()


@pytest.mark.parametrize("precision", ["int4", "int4g32", "int8"])
def test_dequantized_weights_are_the_references_bit_for_bit(precision):
    q = quantize(torch.randn(48, 128), Precision(precision), 64)
    assert q.scales is not None
    if q.zeros is None:
        got = native.q8_dequantize(q.values, q.scales)
    else:
        got = native.q4_dequantize(native.pack_q4(q.values), torch.stack([q.scales, q.zeros]), q.group_size)
    assert torch.equal(got, dequantize(q))


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_many_rows_go_through_the_dequantized_weight_and_fp32_mm(monkeypatch, precision):
    monkeypatch.setattr(cpu_kernels, "native_int4", lambda cols, group: True)
    monkeypatch.setattr(native, "preferred", lambda name: True)
    q = quantize(torch.randn(64, 128), Precision(precision), 64)
    kernel = cpu_kernels.Int8CpuKernel(q) if precision == "int8" else cpu_kernels.Int4CpuKernel(q)
    x = _rows(native.DEQUANT_ROWS, 128, seed=3)
    assert torch.equal(kernel.matmul(x), (x.float() @ dequantize(q).t()).to(torch.bfloat16))


@pytest.mark.parametrize("precision", ["int4", "int8", "bf16"])
def test_the_two_routes_preferred_times_compute_the_same_product(precision):
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(64, 128, generator=gen) / 128**0.5  # [N, K]
    x = torch.randn(3, 128, generator=gen).to(torch.bfloat16)  # [M, K], Gaussian: no outlier channel
    torch_route, native_route = native.routes(precision, weight)
    assert relative_error(native_route(x), torch_route(x)) < NATIVE_INT4_BOUND  # int4's 8-bit activations


@pytest.mark.parametrize("bits", [2, 3])
def test_native_nibble_unpacking_is_the_torch_ops_byte_for_byte(bits):
    """The int3/int2 kernels' per-call unpacking (moeqos.executor.quant.packed_kernels): every code
    value at every position of an eight-code step, and a refused bit width."""
    count = 8 * 4096
    codes = (torch.arange(count) * 7 % (1 << bits)).to(torch.uint8) + code_offset(bits)  # [n]
    codes[: 1 << bits] = torch.arange(1 << bits, dtype=torch.uint8) + code_offset(bits)
    packed = pack_codes(codes, bits)
    expected = unpack_nibble_bytes(packed, bits, count)  # [n/2]
    assert torch.equal(native.unpack_nibbles(packed, bits, count), expected)
    with pytest.raises(RuntimeError, match="code 1"):
        native.unpack_nibbles(packed, 4, count)
