"""The RTN formats: codes, scales and zeros as documented, error within the documented bounds, bytes as
the contract says, and the portable state round trip."""

from __future__ import annotations

import zlib

import pytest
import torch
from moeqos.core.precision import Precision
from moeqos.executor.quant.reference import (
    QUANT_ERROR_BOUNDS,
    quantize_dequantize,
    reference_linear,
    relative_error,
)
from moeqos.executor.quant.rtn import CODE_MID, dequantize, quantize
from moeqos.executor.quant.state import pack_nibbles, unpack_nibbles, weight_from_state, weight_to_state

GROUPED = [Precision.INT4, Precision.INT3, Precision.INT2]


def generator(*case: object) -> torch.Generator:
    """A generator seeded from the test case, so every case draws its own inputs."""
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("precision", list(Precision))
def test_quantization_error_within_documented_bound(precision: Precision, group_size: int) -> None:
    gen = generator(precision, group_size)
    weight = torch.randn(256, 512, generator=gen)  # [N, K]
    x = torch.randn(8, 512, generator=gen)  # [M, K]
    y = reference_linear(x, weight)  # [M, N]
    y_q = reference_linear(x, quantize_dequantize(weight, precision, group_size))
    error = relative_error(y_q, y)
    assert error <= QUANT_ERROR_BOUNDS[precision]
    # Fewer bits must cost accuracy: a format that silently stored more would pass the bound above.
    if precision.bits < 32:
        assert error > 0


@pytest.mark.parametrize("precision", GROUPED)
def test_grouped_codes_use_their_levels_centred_on_eight(precision: Precision) -> None:
    weight = torch.randn(32, 256, generator=generator(precision))
    q = quantize(weight, precision, 64)
    half = (1 << precision.bits) // 2
    assert q.values.dtype == torch.uint8
    assert int(q.values.min()) == CODE_MID - half
    assert int(q.values.max()) == CODE_MID + half - 1
    assert q.scales is not None and q.zeros is not None
    assert q.scales.shape == q.zeros.shape == (32, 4)
    assert q.scales.dtype == torch.bfloat16
    assert q.zeros.dtype == (torch.int8 if precision.is_bit_packed else torch.bfloat16)


@pytest.mark.parametrize("precision", GROUPED)
def test_group_extremes_are_reproduced_within_half_a_step(precision: Precision) -> None:
    weight = torch.randn(16, 128, generator=generator("extremes", precision))
    q = quantize(weight, precision, 32)
    back = dequantize(q).view(16, 4, 32)  # [N, G, g]
    grouped = weight.view(16, 4, 32)
    assert q.scales is not None
    half_step = q.scales.float() / 2 * 1.05  # bf16 rounding of the scale and zero
    assert ((back.amax(2) - grouped.amax(2)).abs() <= half_step).all()
    assert ((back.amin(2) - grouped.amin(2)).abs() <= half_step).all()


def test_int8_is_symmetric_per_row() -> None:
    weight = torch.randn(24, 80, generator=generator("int8"))
    q = quantize(weight, Precision.INT8)
    assert q.values.dtype == torch.int8 and q.scales is not None and q.scales.shape == (24,)
    assert int(q.values.abs().max(dim=1).values.min()) == 127
    assert torch.allclose(dequantize(q), weight, atol=float(q.scales.float().max()) / 2 * 1.01)


@pytest.mark.parametrize("precision", [Precision.INT8, *GROUPED])
def test_constant_and_zero_rows_quantize_exactly_enough(precision: Precision) -> None:
    weight = torch.zeros(4, 64)
    weight[1] = 0.5
    weight[2, :32] = -3.0
    back = quantize_dequantize(weight, precision, 32)
    assert torch.isfinite(back).all()
    assert torch.allclose(back, weight, atol=2e-2)


def test_short_last_group_keeps_its_own_range() -> None:
    weight = torch.randn(8, 70, generator=generator("short"))
    weight[:, 64:] *= 100  # the 6-column last group is far wider than the rest
    q = quantize(weight, Precision.INT4, 64)
    assert q.scales is not None and q.scales.shape == (8, 2)
    first = relative_error(dequantize(q)[:, :64], weight[:, :64])
    assert first < 0.15


@pytest.mark.parametrize("cols", [1, 2, 7, 64])
def test_nibble_packing_round_trips(cols: int) -> None:
    codes = torch.randint(0, 16, (5, cols), generator=generator("nibbles", cols), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.shape == (5, -(-cols // 2))
    assert torch.equal(unpack_nibbles(packed, cols), codes)


@pytest.mark.parametrize("precision", list(Precision))
def test_state_round_trip_is_exact(precision: Precision) -> None:
    weight = torch.randn(12, 45, generator=generator("state", precision))
    q = quantize(weight, precision, 32)
    state = weight_to_state(q, "w.")
    assert all(k.startswith("w.") and t.is_contiguous() and t.device.type == "cpu" for k, t in state.items())
    back = weight_from_state(state, precision, 32, "w.")
    assert torch.equal(dequantize(back), dequantize(q))
    assert torch.equal(back.values, q.values)


@pytest.mark.parametrize("precision", [Precision.INT8, Precision.INT4])
def test_state_with_the_wrong_precision_or_group_size_is_rejected(precision: Precision) -> None:
    state = weight_to_state(quantize(torch.randn(8, 128), Precision.INT4, 32))
    wrong_group = 64 if precision == Precision.INT4 else 32
    with pytest.raises(ValueError):
        weight_from_state(state, precision, wrong_group)
