"""`QuantExpert` against the naive fp32 SwiGLU reference, its byte count, and its portable state."""

from __future__ import annotations

import zlib

import pytest
import torch
from moeqos.core.precision import Precision, expert_bytes
from moeqos.executor.quant import QuantExpert, reference_expert_forward
from moeqos.executor.quant.reference import (
    QUANT_ERROR_BOUNDS,
    kernel_error_bound,
    reference_quant_expert_forward,
    relative_error,
)
from safetensors.torch import load, save

# (hidden H, intermediate I, group size): kernel-friendly, the default model's, and awkward shapes.
SHAPES = [(128, 256, 64), (576, 1536, 64), (64, 96, 32), (70, 50, 64)]


def weights(hidden: int, inter: int, *case: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(zlib.crc32(repr((hidden, inter, *case)).encode()))
    w1 = torch.randn(inter, hidden, generator=gen) / hidden**0.5  # [I, H]
    w2 = torch.randn(hidden, inter, generator=gen) / inter**0.5  # [H, I]
    w3 = torch.randn(inter, hidden, generator=gen) / hidden**0.5  # [I, H]
    return w1, w2, w3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("precision", list(Precision))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_expert_matches_reference(
    shape: tuple[int, int, int], precision: Precision, dtype: torch.dtype
) -> None:
    hidden, inter, group_size = shape
    w1, w2, w3 = weights(hidden, inter, precision, dtype)
    x = torch.randn(5, hidden, generator=torch.Generator().manual_seed(hidden + inter)).to(dtype)  # [T, H]
    expert = QuantExpert.from_weights(w1, w2, w3, precision, group_size)

    y = expert(x)  # [T, H]
    assert y.shape == (5, hidden) and y.dtype == dtype
    y_quant_ref = reference_quant_expert_forward(w1, w2, w3, x, precision, group_size)
    # Two matmuls, each within the kernel bound, plus the bf16 rounding of the intermediate.
    assert relative_error(y, y_quant_ref) <= 2 * kernel_error_bound(precision, dtype)
    # Quantization error compounds through gate, up and down; twice the one-matmul bound covers it.
    y_ref = reference_expert_forward(w1, w2, w3, x)
    assert relative_error(y_quant_ref, y_ref) <= 2 * QUANT_ERROR_BOUNDS[precision]


@pytest.mark.parametrize("precision", list(Precision))
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_expert_bytes_follow_the_contract(precision: Precision, group_size: int) -> None:
    expert = QuantExpert.from_weights(*weights(128, 96, precision), precision, group_size)
    assert expert.nbytes() == expert_bytes(128, 96, precision, group_size)


@pytest.mark.parametrize("precision", list(Precision))
@pytest.mark.parametrize("shape", [(128, 256, 64), (70, 50, 64)], ids=str)
def test_state_round_trip_through_safetensors(shape: tuple[int, int, int], precision: Precision) -> None:
    hidden, inter, group_size = shape
    expert = QuantExpert.from_weights(*weights(hidden, inter, "state", precision), precision, group_size)
    state = load(save(expert.to_state()))
    rebuilt = QuantExpert.from_state(state, precision, group_size, "cpu")
    x = torch.randn(3, hidden, generator=torch.Generator().manual_seed(7))
    assert torch.equal(rebuilt(x), expert(x))
    assert expert.to_device("cpu") is expert
    assert rebuilt.nbytes() == expert.nbytes()


def test_mismatched_matrices_are_rejected() -> None:
    a = QuantExpert.from_weights(*weights(64, 32, "a"), Precision.BF16)
    b = QuantExpert.from_weights(*weights(32, 64, "b"), Precision.BF16)
    with pytest.raises(ValueError):
        QuantExpert(a.w13, b.w2)


@pytest.mark.parametrize("precision", [Precision.INT4, Precision.INT4_G32, Precision.INT4_G128])
def test_packed_state_round_trip_skips_the_repack(precision: Precision) -> None:
    expert = QuantExpert.from_weights(*weights(128, 256, "packed", precision), precision, 64)
    state = expert.packed_state()
    assert state is not None and set(state) == {
        "w13.packed",
        "w13.scales_zeros",
        "w2.packed",
        "w2.scales_zeros",
    }
    rebuilt = QuantExpert.from_packed_state(load(save(state)), precision, 64)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(8))  # [T, H]
    assert torch.equal(rebuilt(x), expert(x))
    assert torch.equal(rebuilt.w13.portable().values, expert.w13.portable().values)
    assert rebuilt.nbytes() == expert.nbytes()


def test_only_the_cpu_int4_kernel_has_a_packed_state() -> None:
    for precision in (Precision.BF16, Precision.INT8):
        assert QuantExpert.from_weights(*weights(128, 256, precision), precision, 64).packed_state() is None
    awkward = QuantExpert.from_weights(*weights(70, 50, "awkward"), Precision.INT4, 64)  # dequantize fallback
    assert awkward.packed_state() is None


def test_a_packed_state_of_the_wrong_shape_is_refused() -> None:
    expert = QuantExpert.from_weights(*weights(128, 256, "wrong"), Precision.INT4, 64)
    state = expert.packed_state()
    assert state is not None
    state["w2.packed"] = state["w2.packed"][:, :-8]
    with pytest.raises(ValueError, match="packed int4 weight"):
        QuantExpert.from_packed_state(state, Precision.INT4, 64)
