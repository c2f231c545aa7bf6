"""CUDA kernel: tinygemm int4 (`aten._weight_int4pack_mm`) for the grouped formats.

Written from torch's `int4mm.cu` (no GPU was available to run it here; the CPU tests cover the shared
code: quantization, scale/zero layout, unpacking). What the op expects:
- packing input: uint8 [N, K/2], code of column 2j in the HIGH nibble of byte j, 2j+1 in the low one;
- innerKTiles in {2, 4, 8} with K a multiple of 16 * innerKTiles; N a multiple of 8 (16 on ROCm, so
  we ask for 16);
- activations bf16, contiguous, 2-D; qScaleAndZeros bf16 [G, N, 2]; group size in {32, 64, 128, 256};
- compute capability 8.0 or newer.
int8 on CUDA goes through `DequantKernel` (int8 -> bf16 is exact, then a bf16 F.linear): torch's CUDA
`_weight_int8pack_mm` is a plain fp32 loop, not a reason to keep a second layout.

Shape legend: M tokens, K input features, N output features, G groups per row.
"""

from __future__ import annotations

import warnings
from functools import cache

import torch
from moeqos.core.precision import Precision
from moeqos.executor.quant.cpu_kernels import INT4_GROUP_SIZES, scales_and_zeros
from moeqos.executor.quant.layout import unpack_codes
from moeqos.executor.quant.packed_kernels import Int4Op
from moeqos.executor.quant.rtn import QuantizedWeight, dequantize, quantize
from torch import Tensor


def _inner_k_tiles(cols: int) -> int | None:
    """Largest innerKTiles the op allows for K columns, None if none fits."""
    return next((tiles for tiles in (8, 4, 2) if cols % (16 * tiles) == 0), None)


def int4_fits(rows: int, cols: int, group_size: int, device: torch.device) -> bool:
    """True if tinygemm handles an [N, K] weight with this group size on `device`."""
    return (
        rows % 16 == 0
        and group_size in INT4_GROUP_SIZES
        and cols % group_size == 0
        and _inner_k_tiles(cols) is not None
        and torch.cuda.get_device_capability(device) >= (8, 0)
        and int4_self_check(device)
    )


def pack_int4_cuda(codes: Tensor) -> Tensor:
    """uint8 codes [N, K] in 0..15 (on the GPU) -> tinygemm's int32 [N/8, K/(16*tiles), 32, tiles/2]."""
    tiles = _inner_k_tiles(codes.shape[1])
    assert tiles is not None
    pairs = ((codes[:, 0::2] << 4) | codes[:, 1::2]).contiguous()  # [N, K/2]
    return torch.ops.aten._convert_weight_to_int4pack(pairs, tiles)


INT4_OP = Int4Op(pack_int4_cuda, torch.ops.aten._weight_int4pack_mm)
"""tinygemm, for the bit-packed int3/int2 kernel (moeqos.executor.quant.packed_kernels): its int32
packed tensor is a view of the unpacked nibble bytes like the CPU op's uint8 one."""


class Int4CudaKernel:
    """Grouped int4 weight through tinygemm."""

    def __init__(self, q: QuantizedWeight) -> None:
        assert q.precision.is_grouped and not q.precision.is_bit_packed
        self.precision = q.precision
        self.shape = q.shape
        self.group_size = q.group_size
        self.packed = pack_int4_cuda(q.values)
        self.scales_zeros = scales_and_zeros(q)  # [G, N, 2]

    def matmul(self, x: Tensor) -> Tensor:
        xb = x.to(torch.bfloat16).contiguous()  # [M, K]
        y = torch.ops.aten._weight_int4pack_mm(xb, self.packed, self.group_size, self.scales_zeros)
        return y.to(x.dtype)  # [M, N]

    def portable(self) -> QuantizedWeight:
        codes = unpack_codes(self.packed, pack_int4_cuda, *self.shape)  # [N, K]
        scales, zeros = self.scales_zeros.transpose(0, 1).unbind(dim=2)  # [N, G] each
        return QuantizedWeight(
            self.precision, codes, scales.contiguous(), zeros.contiguous(), self.group_size
        )


@cache
def int4_self_check(device: torch.device) -> bool:
    """Run tinygemm once on a small random weight against dequantize + matmul, and unpack it again.

    False (with a warning) when this build lacks the op or it disagrees, so `QuantLinear` falls back to
    `DequantKernel` instead of serving wrong numbers from a path no CPU test can reach.
    """
    gen = torch.Generator().manual_seed(0)
    q = quantize(torch.randn(32, 256, generator=gen), Precision.INT4, 64).to(device)  # [32, 256]
    x = torch.randn(4, 256, generator=gen).to(device)  # [4, 256]
    try:
        kernel = Int4CudaKernel(q)
        y = kernel.matmul(x)  # [4, 32]
        same_codes = torch.equal(kernel.portable().values, q.values)
    except RuntimeError as err:
        warnings.warn(f"tinygemm int4 unavailable on {device}: {err}", stacklevel=2)
        return False
    y_ref = x @ dequantize(q).T  # [4, 32]
    error = float((y.float() - y_ref).norm() / y_ref.norm())
    if error > 1e-2 or not same_codes:
        warnings.warn(
            f"tinygemm int4 on {device} disagrees with the reference (error {error:.3g})", stacklevel=2
        )
        return False
    return True
