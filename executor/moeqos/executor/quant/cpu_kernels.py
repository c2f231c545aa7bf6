"""CPU kernels: torch's weight-only int8 and int4 matmuls, fed bf16 activations, or moeqos's native
kernels where those are built and measured faster (moeqos.executor.quant.native; the int4 weight is
then kept in the native kernel's layout, and files in that layout carry its own tag).

Both ops are far slower with fp32 activations than with bf16 (3072x576 weight, one token, one thread:
int4 8.9 ms vs 0.095 ms, int8 4.5 ms vs 0.33 ms), so activations are cast to bf16 for the op and the
result back to the caller's dtype. Shape limits (checked on torch 2.13; outside them the ops
raise, return wrong numbers, or crash, so `QuantLinear` falls back to `DequantKernel`):

- `_weight_int8pack_mm`: K a multiple of 16 (observed: other K give wrong results or segfault); we ask
  for a multiple of 32 to leave room for wider bf16 vectors on other CPUs.
- `_convert_weight_to_int4pack_for_cpu` / `_weight_int4pack_mm_for_cpu`: N a multiple of 16, group size
  in {32, 64, 128, 256} and K a multiple of the group size.

Shape legend: M tokens, K input features, N output features, G groups per row.
"""

from __future__ import annotations

import hashlib
from functools import cache

import torch
from moeqos.core.precision import Precision
from moeqos.executor.quant import native
from moeqos.executor.quant.layout import source_index, unpack_codes
from moeqos.executor.quant.packed_kernels import Int4Op
from moeqos.executor.quant.rtn import QuantizedWeight
from torch import Tensor

INT4_GROUP_SIZES = (32, 64, 128, 256)
"""Group sizes torch's int4 matmuls are compiled for."""

_INNER_K_TILES = 2
"""Packing parameter of the int4 op; the CPU op accepts 2, 4 or 8 and packs identically for each."""


def int8_fits(rows: int, cols: int) -> bool:
    """True if the CPU int8 op handles an [N, K] weight."""
    return cols % 32 == 0


def int4_fits(rows: int, cols: int, group_size: int) -> bool:
    """True if the CPU int4 op handles an [N, K] weight with this group size."""
    return rows % 16 == 0 and group_size in INT4_GROUP_SIZES and cols % group_size == 0


def _bf16_rows(x: Tensor) -> Tensor:
    """x [M, K] as the ops take it: bf16, contiguous. The checks are Python's: a no-op `to` or
    `contiguous` is still an aten call, and a decode step makes hundreds of these."""
    if x.dtype != torch.bfloat16:
        x = x.to(torch.bfloat16)
    return x if x.is_contiguous() else x.contiguous()  # [M, K]


class Int8CpuKernel:
    """Per-row int8 weight through `aten._weight_int8pack_mm` (its layout is the portable one)."""

    def __init__(self, q: QuantizedWeight) -> None:
        assert q.precision == Precision.INT8 and q.scales is not None
        self.q = q
        self.native = native.preferred("int8") and native.q8_fits(q.shape[1])
        """Up to `native.FEW_ROWS` rows go to the native kernel (the same layout: the choice is only which
        op reads it), from `native.DEQUANT_ROWS` on fp32 `mm` on the weight dequantized for the call, in
        between torch's op (16 rows from memory: native 0.81-1.08x)."""

    def matmul(self, x: Tensor) -> Tensor:
        scales = self.q.scales
        assert scales is not None
        if self.native and x.shape[0] <= native.FEW_ROWS:
            y = native.q8_mm(x, self.q.values, scales)  # [M, N] bf16
        elif self.native and x.shape[0] >= native.DEQUANT_ROWS:
            y = native.many_rows(x, native.q8_dequantize(self.q.values, scales))  # [M, N] bf16
        else:
            y = torch.ops.aten._weight_int8pack_mm(_bf16_rows(x), self.q.values, scales)  # [M, N] bf16
        return y if x.dtype == torch.bfloat16 else y.to(x.dtype)  # [M, N]

    def portable(self) -> QuantizedWeight:
        return self.q


def pack_int4_cpu(codes: Tensor) -> Tensor:
    """uint8 codes [N, K] in 0..15 -> the CPU int4 op's packed weight."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), _INNER_K_TILES)


def scales_and_zeros(q: QuantizedWeight) -> Tensor:
    """The int4 ops' qScaleAndZeros: bf16 [G, N, 2], scale then zero."""
    assert q.scales is not None and q.zeros is not None
    return torch.stack([q.scales, q.zeros], dim=2).transpose(0, 1).contiguous()  # [G, N, 2]


def native_int4(cols: int, group_size: int) -> bool:
    """True if an int4 weight of K = `cols` is kept in the native kernel's layout in this process."""
    return native.preferred("int4") and native.q4_fits(cols, group_size)


@cache
def int4_layout_tag(rows: int, cols: int) -> str:
    """A short name of this machine's int4 packed layout for an [N, K] weight.

    The CPU op's blocking depends on the ISA, so packed bytes written on one machine may be laid out
    differently on another: files in the packed layout carry this tag (a hash of where each code lands,
    see moeqos.executor.quant.layout) and are read only where the tag matches. The native layout (the
    same everywhere) is tagged by its block size and version instead.
    """
    if native_int4(cols, native.INT4_BLOCK):
        return f"nat{native.INT4_BLOCK}v1"
    where = source_index(pack_int4_cpu, rows, cols, torch.device("cpu"))  # [N*K]
    return hashlib.sha256(where.numpy().tobytes()).hexdigest()[:12]


INT4_OP = Int4Op(pack_int4_cpu, torch.ops.aten._weight_int4pack_mm_for_cpu)
"""The CPU int4 op, for the bit-packed int3/int2 kernel (moeqos.executor.quant.packed_kernels)."""


class Int4CpuKernel:
    """Grouped int4 weight through `aten._weight_int4pack_mm_for_cpu`, or the native kernel (`native`:
    then `packed` is in `native.pack_q4`'s layout and `scales_zeros` is [2, N, G])."""

    def __init__(self, q: QuantizedWeight) -> None:
        assert q.precision.is_grouped and not q.precision.is_bit_packed
        assert q.scales is not None and q.zeros is not None
        self.precision = q.precision
        self.shape = q.shape
        self.group_size = q.group_size
        self.native = native_int4(q.shape[1], q.group_size)
        if self.native:
            self.packed = native.pack_q4(q.values)  # uint8 [N, K/2]
            self.scales_zeros = torch.stack([q.scales, q.zeros]).contiguous()  # [2, N, G]
        else:
            self.packed = pack_int4_cpu(q.values)  # uint8 [N, K/2], CPU-specific order
            self.scales_zeros = scales_and_zeros(q)  # [G, N, 2]

    @classmethod
    def from_packed(
        cls, precision: Precision, group_size: int, packed: Tensor, scales_zeros: Tensor
    ) -> Int4CpuKernel:
        """The kernel from `packed_state` tensors written on a machine with the same layout tag: no
        repacking (which is most of the cost of reading an int4 expert from disk)."""
        kernel = cls.__new__(cls)
        kernel.precision, kernel.group_size = precision, group_size
        rows, cols = int(packed.shape[0]), int(packed.shape[1]) * 2  # (N, K) of packed [N, K/2]
        kernel.native = native_int4(cols, group_size)
        groups = (2, rows, cols // group_size) if kernel.native else (cols // group_size, rows, 2)
        if packed.dtype != torch.uint8 or cols % group_size or tuple(scales_zeros.shape) != groups:
            raise ValueError(
                f"packed int4 weight {tuple(packed.shape)} {packed.dtype} does not match scales and zeros "
                f"{tuple(scales_zeros.shape)} with group size {group_size}"
            )
        kernel.shape = (rows, cols)
        kernel.packed, kernel.scales_zeros = packed, scales_zeros
        return kernel

    def packed_state(self) -> dict[str, Tensor]:
        """The weight in this machine's kernel layout: `packed` uint8 [N, K/2], `scales_zeros` [G, N, 2]."""
        return {"packed": self.packed, "scales_zeros": self.scales_zeros}

    def matmul(self, x: Tensor) -> Tensor:
        if self.native and x.shape[0] >= native.DEQUANT_ROWS:
            weight = native.q4_dequantize(self.packed, self.scales_zeros, self.group_size)  # [N, K] fp32
            y = native.many_rows(x, weight)  # [M, N] bf16
        elif self.native:
            y = native.q4_mm(x, self.packed, self.scales_zeros, self.group_size)  # [M, N] bf16
        else:
            xb = _bf16_rows(x)  # [M, K]
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                xb, self.packed, self.group_size, self.scales_zeros
            )
        return y if x.dtype == torch.bfloat16 else y.to(x.dtype)  # [M, N]

    def portable(self) -> QuantizedWeight:
        if self.native:
            codes = native.unpack_q4(self.packed)  # [N, K]
            scales, zeros = self.scales_zeros.unbind(dim=0)  # [N, G] each
        else:
            codes = unpack_codes(self.packed, pack_int4_cpu, *self.shape)  # [N, K]
            scales, zeros = self.scales_zeros.transpose(0, 1).unbind(dim=2)  # [N, G] each
        return QuantizedWeight(
            self.precision, codes, scales.contiguous(), zeros.contiguous(), self.group_size
        )
