"""The on-disk form of a `QuantizedWeight`: flat, contiguous CPU tensors that safetensors can write.

Keys, under a caller's prefix (e.g. `w13.`):
- `values`: the float weight, int8 codes [N, K], for int4 4-bit codes packed two per byte
  [N, ceil(K / 2)] uint8 (even column in the low nibble), for int3/int2 the row-major codes bit-packed
  uint8 [packed_code_bytes(N*K)] (moeqos.executor.quant.packing);
- `scales`, `zeros`: as in `QuantizedWeight`, when present (int3/int2 zeros: int8 integer zero points);
- `shape`: int64 [2] = (N, K), since packed codes alone do not say whether K is odd.
"""

from __future__ import annotations

import torch
from moeqos.core.precision import Precision, packed_code_bytes
from moeqos.executor.quant.packing import pack_codes, unpack_codes
from moeqos.executor.quant.rtn import CODE_MID, QuantizedWeight
from torch import Tensor


def pack_nibbles(codes: Tensor) -> Tensor:
    """uint8 codes [N, K] in 0..15 -> uint8 [N, ceil(K / 2)], even column in the low nibble."""
    if codes.shape[1] % 2:
        codes = torch.cat([codes, torch.full_like(codes[:, :1], CODE_MID)], dim=1)  # [N, K+1]
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: Tensor, cols: int) -> Tensor:
    """Inverse of `pack_nibbles`: uint8 [N, ceil(K / 2)] -> uint8 codes [N, K]."""
    low, high = packed & 0x0F, packed >> 4  # [N, K/2] each
    return torch.stack([low, high], dim=2).flatten(1)[:, :cols].contiguous()  # [N, K]


def weight_to_state(q: QuantizedWeight, prefix: str = "") -> dict[str, Tensor]:
    """Flat CPU tensors for `q`, keys prefixed by `prefix`."""
    values = q.values
    if q.precision.is_bit_packed:
        values = pack_codes(q.values, q.precision.bits)
    elif q.precision.is_grouped:
        values = pack_nibbles(q.values)
    state = {"values": values, "shape": torch.tensor(q.shape, dtype=torch.int64)}
    if q.scales is not None:
        state["scales"] = q.scales
    if q.zeros is not None:
        state["zeros"] = q.zeros
    return {prefix + key: t.detach().to("cpu").contiguous() for key, t in state.items()}


def weight_from_state(
    state: dict[str, Tensor], precision: Precision, group_size: int, prefix: str = ""
) -> QuantizedWeight:
    """Rebuild a `QuantizedWeight` (on CPU) from `weight_to_state` output (`group_size`: the plan's, see
    moeqos.core.precision.Precision.group)."""
    rows, cols = (int(n) for n in state[prefix + "shape"].tolist())
    values = state[prefix + "values"]
    if precision.is_bit_packed:
        if values.dtype != torch.uint8 or values.numel() != packed_code_bytes(rows * cols, precision):
            raise ValueError(f"state {prefix!r}: {values.numel()} bytes are not {precision} {rows}x{cols}")
        values = unpack_codes(values, precision.bits, rows * cols).view(rows, cols)
    elif precision.is_grouped:
        values = unpack_nibbles(values, cols)
    if tuple(values.shape) != (rows, cols):
        raise ValueError(f"state {prefix!r}: values shape {tuple(values.shape)} != {(rows, cols)}")
    return QuantizedWeight(
        precision,
        values,
        state.get(prefix + "scales"),
        state.get(prefix + "zeros"),
        precision.group(group_size),
    )
