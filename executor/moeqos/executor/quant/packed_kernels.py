"""Kernels for bit-packed int3/int2 weights: memory at 3 and 2 bits a weight, computed two ways.

- `UnpackInt4Kernel` (where an int4 op fits the shape): the codes are kept bit-packed in the order the
  int4 op's packed tensor holds them (learned once per shape, moeqos.executor.quant.layout), so a call
  unpacks them straight into that tensor's bytes (on CPU in one native pass with a table,
  moeqos.executor.quant.native.unpack_nibbles; elsewhere with byte-wise torch shifts) and runs the int4 op.
- `UnpackDequantKernel` (any shape, any device): unpack the codes, dequantize, F.linear.

Measured on a 576x1536 weight, one token, bf16 activations, one torch thread, the paths in turn in one
run (`moeqos.bench.kernels.packed_paths_table`, 200 repeats, the 2-core AVX2 VM, two runs):

| path                      | ms          | x int4    |
|---------------------------|-------------|-----------|
| int4, the int4 op         | 0.092-0.119 | 1.00      |
| int3, unpack -> int4 op   | 0.385-0.423 | 3.6-4.2   |
| int3, unpack + dequantize | 3.4-4.2     | 35-37     |
| int2, unpack -> int4 op   | 0.359-0.409 | 3.4-3.9   |
| int2, unpack + dequantize | 2.4-3.2     | 26-27     |

so `QuantLinear` takes the int4-op path wherever the op fits the shape. With torch's shifts the int3
unpacking took 1.0-2.0 ms of a 3072x576 weight, natively 0.27 (int2: 0.38-0.52 against 0.18), and the
int3 path ran at 9.5x int4 in this table before. Unpacking is still most of its time: sub-4-bit experts
save memory, not decode time, and the profile's measured call costs say so.

Shape legend: M tokens, K input features, N output features, G groups per row, n = N*K codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from moeqos.executor.quant import native
from moeqos.executor.quant.layout import PackFn, source_index
from moeqos.executor.quant.packing import pack_codes, unpack_codes, unpack_nibble_bytes
from moeqos.executor.quant.rtn import QuantizedWeight, dequantize
from torch import Tensor

MatmulFn = Callable[[Tensor, Tensor, int, Tensor], Tensor]
"""(x bf16 [M, K], packed weight, group size, scales_zeros [G, N, 2]) -> y bf16 [M, N]."""


@dataclass(frozen=True)
class Int4Op:
    """One device's int4 op: how it packs codes and how it multiplies (both devices' ops take the same
    qScaleAndZeros, bf16 [G, N, 2])."""

    pack: PackFn
    matmul: MatmulFn


def op_scales_zeros(scales: Tensor, zeros: Tensor) -> Tensor:
    """The int4 ops' qScaleAndZeros, bf16 [G, N, 2], from a bit-packed weight's bf16 scales and int8
    integer zero points, both [G, N]: the float zero is bf16(m * scale) as `float_zeros` defines it.

    Written into place from [G, N] operands (18 us for G, N = 24, 576 on one loaded core, against 60 us
    for float_zeros, a stack and a transpose), since it runs on every call."""
    out = torch.empty(*scales.shape, 2, dtype=torch.bfloat16, device=scales.device)  # [G, N, 2]
    out[:, :, 0] = scales
    out[:, :, 1] = zeros * scales  # int8 * bf16 -> bf16: the exact product, rounded once
    return out


class UnpackInt4Kernel:
    """int3/int2 weight bit-packed in an int4 op's code order; unpacked into the op's layout per call."""

    def __init__(self, q: QuantizedWeight, op: Int4Op) -> None:
        assert q.precision.is_bit_packed
        self.precision, self.shape, self.group_size, self.op = q.precision, q.shape, q.group_size, op
        template = op.pack(q.values)  # the op's packed tensor; only its dtype and shape are kept
        self.packed_dtype, self.packed_shape = template.dtype, tuple(template.shape)
        order = source_index(op.pack, *self.shape, q.values.device)  # [n]: the code at each nibble
        self.bits = pack_codes(q.values.flatten()[order], q.precision.bits)  # [n*b/8]
        native_unpack = self.bits.device.type == "cpu" and native.library() is not None
        self._unpack = native.unpack_nibbles if native_unpack else unpack_nibble_bytes
        assert q.scales is not None and q.zeros is not None
        # resident as stored (bf16 scales, int8 zero points: the byte contract), transposed for
        # `op_scales_zeros`, which makes the op's float pairs per call
        self.scales_t = q.scales.T.contiguous()  # [G, N]
        self.zeros_t = q.zeros.T.contiguous()  # [G, N]

    def matmul(self, x: Tensor) -> Tensor:
        count = self.shape[0] * self.shape[1]
        raw = self._unpack(self.bits, self.precision.bits, count)  # uint8 [n/2]
        packed = raw.view(self.packed_dtype).view(self.packed_shape)
        scales_zeros = op_scales_zeros(self.scales_t, self.zeros_t)  # [G, N, 2]
        y = self.op.matmul(x.to(torch.bfloat16).contiguous(), packed, self.group_size, scales_zeros)
        return y.to(x.dtype)  # [M, N]

    def portable(self) -> QuantizedWeight:
        rows, cols = self.shape
        ordered = unpack_codes(self.bits, self.precision.bits, rows * cols)  # [n], op order
        codes = torch.empty_like(ordered)  # [n], row-major
        codes[source_index(self.op.pack, rows, cols, ordered.device)] = ordered
        scales, zeros = self.scales_t.T.contiguous(), self.zeros_t.T.contiguous()  # [N, G] each
        return QuantizedWeight(self.precision, codes.view(rows, cols), scales, zeros, self.group_size)


class UnpackDequantKernel:
    """int3/int2 weight bit-packed row-major; each call unpacks, dequantizes and runs F.linear."""

    def __init__(self, q: QuantizedWeight) -> None:
        assert q.precision.is_bit_packed and q.scales is not None and q.zeros is not None
        self.precision, self.shape, self.group_size = q.precision, q.shape, q.group_size
        self.bits = pack_codes(q.values, q.precision.bits)  # [n*b/8]
        self.scales, self.zeros = q.scales, q.zeros  # [N, G] each

    def matmul(self, x: Tensor) -> Tensor:
        # Dequantizing in fp32 first keeps (code - 8) * scale + zero from rounding twice in 16 bits.
        return F.linear(x, dequantize(self.portable()).to(x.dtype))  # [M, N]

    def portable(self) -> QuantizedWeight:
        rows, cols = self.shape
        codes = unpack_codes(self.bits, self.precision.bits, rows * cols).view(rows, cols)  # [N, K]
        return QuantizedWeight(self.precision, codes, self.scales, self.zeros, self.group_size)
