"""The float few-row matmul paths (moeqos.executor.quant.gemv_paths): every candidate op against the
pure-torch reference, and the chooser's table against injected timings."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import pytest
import torch
from moeqos.core.precision import Precision
from moeqos.executor.dense_part import DenseSlot
from moeqos.executor.quant import gemv_paths, native, quantize_linear
from moeqos.executor.quant.gemv_paths import (
    CANDIDATES,
    MANY,
    MAX_ROWS,
    PROBE_ROWS,
    GemvPaths,
    candidates,
    fastest,
)
from moeqos.executor.quant.reference import kernel_error_bound, reference_linear, relative_error

DTYPES = {torch.float32: Precision.FP32, torch.bfloat16: Precision.BF16, torch.float16: Precision.FP16}


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("shape", [(64, 128), (192, 576), (576, 1536), (3, 7), (1, 1)], ids=str)
def test_every_candidate_matches_the_reference(shape: tuple[int, int], rows: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(rows * 1000 + shape[0])
    weight = torch.randn(shape, generator=gen).to(dtype)  # [N, K]
    x = torch.randn(rows, shape[1], generator=gen).to(dtype)  # [M, K]
    expected = reference_linear(x, weight)  # [M, N] fp32
    ops = candidates(rows, dtype, shape[1])
    widened = set() if dtype == torch.float32 else {"mm_f32"}  # fp32: mm_f32 would be mm
    names = {"mm", "mv", "mm_wx"} if rows == 1 else {"mm", "mm_wx"} | widened
    names |= _native(dtype, shape[1])
    assert set(ops) == names and set(ops) <= set(CANDIDATES)
    for name, op in ops.items():
        y = op(x, weight)
        assert y.shape == (rows, shape[0]) and y.dtype == dtype and y.is_contiguous(), name
        assert relative_error(y, expected) <= kernel_error_bound(DTYPES[dtype], dtype), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rows", [MAX_ROWS + 1, 100])
def test_every_many_row_candidate_matches_the_reference(rows: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(192, 576, generator=gen).to(dtype)  # [N, K]
    x = torch.randn(rows, 576, generator=gen).to(dtype)  # [M, K]
    expected = reference_linear(x, weight)  # [M, N] fp32
    assert set(candidates(rows, dtype, 576)) == {"mm", "mm_f32"}  # native: one row to MAX_ROWS
    for name, op in candidates(rows, dtype, 576).items():
        y = op(x, weight)
        assert y.shape == (rows, 192) and y.dtype == dtype and y.is_contiguous(), name
        assert relative_error(y, expected) <= kernel_error_bound(DTYPES[dtype], dtype), name


def _native(dtype: torch.dtype, cols: int) -> set[str]:
    """{"native"} where the native bf16 kernel is a candidate: built, bf16, K a multiple of 8."""
    built = native.library() is not None
    return {"native"} if built and dtype == torch.bfloat16 and cols % 8 == 0 else set()


def fake_timer(seconds: Mapping[str, float], calls: list[set[str]]) -> gemv_paths.Timer:
    """Times from `seconds`, each candidate called once (its result must still be computed), and every
    timing's candidate names recorded in `calls`."""

    def measure(ops: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        calls.append(set(ops))
        return {name: seconds[name] if ops[name]() is not None else 0.0 for name in ops}

    return measure


def test_the_chooser_takes_the_fastest_and_times_each_key_once() -> None:
    calls: list[set[str]] = []
    paths = GemvPaths(fake_timer({"mm": 3.0, "mv": 1.0, "mm_wx": 2.0, "mm_f32": 2.5, "native": 4.0}, calls))
    w = torch.randn(48, 32, dtype=torch.bfloat16)  # [N, K]
    one, two = torch.randn(1, 32, dtype=torch.bfloat16), torch.randn(2, 32, dtype=torch.bfloat16)
    for _ in range(3):
        torch.testing.assert_close(paths.matmul(one, w), one @ w.T, rtol=0.02, atol=0.02)
        paths.matmul(two, w)
    threads = torch.get_num_threads()
    assert paths.chosen == {
        (1, 48, 32, torch.bfloat16, threads): "mv",
        (2, 48, 32, torch.bfloat16, threads): "mm_wx",  # mv takes one row only
    }
    built = _native(torch.bfloat16, 32)
    assert calls == [{"mm", "mv", "mm_wx"} | built, {"mm", "mm_wx", "mm_f32"} | built]


def test_mm_stays_unless_another_op_beats_it_by_the_margin() -> None:
    assert fastest({"mm": 1.0, "mv": 0.95, "mm_wx": 0.93}) == "mm"
    assert fastest({"mm": 1.0, "mv": 0.5, "mm_wx": 0.93}) == "mv"
    assert fastest({"mm": 1.0, "mv": 1.5, "mm_wx": 2.0}) == "mm"


def test_a_thread_count_change_is_timed_again() -> None:
    calls: list[set[str]] = []
    paths = GemvPaths(fake_timer({"mm": 1.0, "mv": 0.1, "mm_wx": 2.0}, calls))
    x, w = torch.randn(1, 16), torch.randn(8, 16)  # [M, K], [N, K]
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            paths.matmul(x, w)
    finally:
        torch.set_num_threads(before)
    assert {key[-1] for key in paths.chosen} == {1, 2}
    assert len(calls) == 2


def test_fp32_prefill_rows_and_strided_weights_take_mm_untimed() -> None:
    calls: list[set[str]] = []
    paths = GemvPaths(fake_timer({"mm": 1.0, "mv": 0.1, "mm_wx": 0.1, "mm_f32": 0.1}, calls))
    w = torch.randn(16, 8)  # [N, K]
    x = torch.randn(MAX_ROWS + 1, 8)  # [M, K]
    torch.testing.assert_close(paths.matmul(x, w), x @ w.T)
    torch.testing.assert_close(paths.matmul(x[:1], w.t().contiguous().t()), x[:1] @ w.T)
    assert calls == [] and paths.chosen == {}


def test_16_bit_products_of_many_rows_share_one_key_timed_on_the_probe_rows() -> None:
    calls: list[set[str]] = []
    probed: list[int] = []
    fake = fake_timer({"mm": 1.0, "mm_f32": 0.2, "native": 0.5}, calls)

    def timer(ops: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        probed.append(ops["mm"]().shape[0])  # type: ignore[attr-defined]
        return fake(ops)

    paths = GemvPaths(timer)
    w = torch.randn(48, 32).to(torch.bfloat16)  # [N, K]
    for rows in (MAX_ROWS + 1, 100, 3 * PROBE_ROWS):
        x = torch.randn(rows, 32).to(torch.bfloat16)  # [M, K]
        y = paths.matmul(x, w)
        assert y.shape == (rows, 48) and y.dtype == torch.bfloat16
        assert relative_error(y, reference_linear(x, w)) <= 1e-2
    assert paths.chosen == {(MANY, 48, 32, torch.bfloat16, torch.get_num_threads()): "mm_f32"}
    assert calls == [{"mm", "mm_f32"}] and probed == [MAX_ROWS + 1]
    big = torch.randn(5 * PROBE_ROWS, 32).to(torch.bfloat16)
    paths.matmul(big, torch.randn(40, 32).to(torch.bfloat16))
    assert probed[-1] == PROBE_ROWS  # a longer call is timed on its first PROBE_ROWS rows


def test_float_kernels_compute_through_the_process_table(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[set[str]] = []
    monkeypatch.setattr(
        gemv_paths, "PATHS", GemvPaths(fake_timer({"mm": 1.0, "mv": 0.1, "mm_wx": 2.0}, calls))
    )
    # fp16: a bf16 weight takes oneDNN's prepacked kernel where it fits (test_onednn_kernels.py)
    weight = torch.randn(32, 64)  # [N, K]
    x = torch.randn(1, 64).to(torch.float16)  # [M, K]
    y = quantize_linear(weight, Precision.FP16)(x)
    assert relative_error(y, reference_linear(x, weight.to(torch.float16))) <= 1e-2
    assert gemv_paths.PATHS.chosen == {(1, 32, 64, torch.float16, torch.get_num_threads()): "mv"}


def test_dense_slots_of_the_checkpoint_module_compute_through_the_process_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[set[str]] = []
    monkeypatch.setattr(
        gemv_paths, "PATHS", GemvPaths(fake_timer({"mm": 1.0, "mv": 2.0, "mm_wx": 0.1, "native": 0.5}, calls))
    )
    linear = torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16).requires_grad_(False)  # [N, K], as loaded
    slot = DenseSlot("model.layers.0.self_attn.q_proj", linear, None, threading.local())
    x = torch.randn(1, 64).to(torch.bfloat16)  # [M, K]
    with torch.inference_mode():
        y = slot(x)
    assert relative_error(y, reference_linear(x, linear.weight)) <= 1e-2
    assert gemv_paths.PATHS.chosen == {(1, 32, 64, torch.bfloat16, torch.get_num_threads()): "mm_wx"}
