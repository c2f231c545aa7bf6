"""Round-to-nearest quantization formats: the math from a float weight to codes and back.

A `QuantizedWeight` is one [N, K] matrix (N output rows, K input columns) in one precision, in the
portable layout that every kernel is built from and that goes to disk:

- fp32 / bf16 / fp16: `values` is the weight in that dtype.
- int8: symmetric per output row; `values` int8 codes [N, K], `scales` bf16 [N]; w = code * scale.
- int4 / int3 / int2: asymmetric per group of `group_size` columns (the last group of a row may be short);
  `values` uint8 codes [N, K] in 0..15, `scales` bf16 [N, G] with G = ceil(K / group_size);
  w = (code - 8) * scale + zero. This is the tinygemm convention that torch's int4 kernels compute with,
  so a kernel sees exactly the weight this module defines. A b-bit format uses the 2**b codes centred on
  8 (int3: 4..11, int2: 6..9). int4's `zeros` are bf16 [N, G] (the value at code 8). The bit-packed
  int3/int2 store an integer zero point instead, one byte a group (moeqos.core.precision.ZERO_POINT_BYTES):
  `zeros` int8 [N, G] = m, the zero in whole scales, and the kernels' float zero is bf16(m * scale)
  (`float_zeros`). This is GPTQ's asymmetric format (w = (q - z) * scale on the b-bit code q, with
  z = 2**(b-1) - m), written in tinygemm's convention.
  A precision that names its group size (`int4g32`) is quantized with that group whatever the caller's
  `group_size` (moeqos.core.precision.Precision.group). int3/int2 codes are bit-packed only where they
  are stored (moeqos.executor.quant.packing); here they are one code a byte like int4's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from moeqos.core.precision import Precision
from torch import Tensor

FLOAT_DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}
"""Storage dtype of each plain float precision."""

CODE_MID = 8
"""The int4 code whose weight is `zero` in the tinygemm convention."""

_TINY_SCALE = 1e-12
"""Scale floor, so a constant row or group quantizes without dividing by zero."""

ZERO_SPAN = 120
"""An integer zero point m stays within +-(ZERO_SPAN + 8) (inside int8): a group whose largest weight is
more than ZERO_SPAN scales from 0 gets a larger scale. Real weights' groups straddle 0, so this binds
only for a group far off 0 relative to its spread (a constant group)."""


@dataclass(frozen=True)
class QuantizedWeight:
    """One [N, K] weight matrix in one precision, portable layout (see module docstring)."""

    precision: Precision
    values: Tensor
    """Float weight, int8 codes, or uint8 codes in 0..15; [N, K]."""
    scales: Tensor | None = None
    """bf16; [N] for int8, [N, G] for the grouped formats, None for floats."""
    zeros: Tensor | None = None
    """[N, G] for the grouped formats (bf16 for int4, int8 integer zero points for int3/int2), else None."""
    group_size: int = 64

    def __post_init__(self) -> None:
        if self.precision.is_float:
            return
        if self.precision.group_size not in (None, self.group_size):
            raise ValueError(
                f"{self.precision} has groups of {self.precision.group_size}, not {self.group_size}"
            )
        rows, cols = self.values.shape
        expected = (rows,) if self.precision == Precision.INT8 else (rows, -(-cols // self.group_size))
        got = [None if t is None else tuple(t.shape) for t in (self.scales, self.zeros)]
        wanted = [expected, expected if self.precision.is_grouped else None]
        if got != wanted:
            raise ValueError(
                f"{self.precision} {rows}x{cols}, group {self.group_size}: scales, zeros {got} != {wanted}"
            )
        zero_dtype = torch.int8 if self.precision.is_bit_packed else torch.bfloat16
        if self.zeros is not None and self.zeros.dtype != zero_dtype:
            raise ValueError(f"{self.precision} zeros are {zero_dtype}, not {self.zeros.dtype}")

    @property
    def shape(self) -> tuple[int, int]:
        out_features, in_features = self.values.shape
        return out_features, in_features

    def to(self, device: str | torch.device) -> QuantizedWeight:
        """The same weight with every tensor on `device`."""
        return QuantizedWeight(
            self.precision,
            self.values.to(device),
            None if self.scales is None else self.scales.to(device),
            None if self.zeros is None else self.zeros.to(device),
            self.group_size,
        )


def quantize(weight: Tensor, precision: Precision, group_size: int = 64) -> QuantizedWeight:
    """Round-to-nearest quantize a float [N, K] weight into `precision` (grouped formats: with groups of
    `precision.group(group_size)`)."""
    group_size = precision.group(group_size)
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}")
    w = weight.detach().float()  # [N, K]
    if precision.is_float:
        return QuantizedWeight(precision, w.to(FLOAT_DTYPES[precision]).contiguous(), group_size=group_size)
    if precision == Precision.INT8:
        return _quantize_int8(w, group_size)
    return _quantize_grouped(w, precision, group_size)


def _quantize_int8(w: Tensor, group_size: int) -> QuantizedWeight:
    absmax = w.abs().amax(dim=1)  # [N]
    scales = (absmax / 127).clamp_min(_TINY_SCALE).to(torch.bfloat16)  # [N]
    codes = (w / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)  # [N, K]
    return QuantizedWeight(Precision.INT8, codes.contiguous(), scales, group_size=group_size)


def _quantize_grouped(w: Tensor, precision: Precision, group_size: int) -> QuantizedWeight:
    levels = 1 << precision.bits
    rows, cols = w.shape
    groups = -(-cols // group_size)
    # Replicating the last column keeps a short last group's min and max its own.
    padded = F.pad(w[None], (0, groups * group_size - cols), mode="replicate")[0]  # [N, G*g]
    grouped = padded.view(rows, groups, group_size)  # [N, G, g]
    lo, hi = grouped.amin(dim=2), grouped.amax(dim=2)  # [N, G]
    spread = (hi - lo) / (levels - 1)  # [N, G]
    if precision.is_bit_packed:
        spread = torch.maximum(spread, torch.maximum(lo.abs(), hi.abs()) / ZERO_SPAN)  # [N, G]
    scales = spread.clamp_min(_TINY_SCALE).to(torch.bfloat16)  # [N, G]
    zeros = lo + (levels // 2) * scales.float()  # [N, G], the value at code 8 that spans [lo, hi]
    if precision.is_bit_packed:
        # Rounding the zero to whole scales shifts the grid by at most half a step; the end codes then
        # clamp, so no weight is further than half a step from its code (GPTQ's integer zero point).
        zeros = (zeros / scales.float()).round().clamp(-128, 127).to(torch.int8)  # [N, G]
    else:
        zeros = zeros.to(torch.bfloat16)  # [N, G]
    kernel_zeros = float_zeros(precision, scales, zeros)  # bf16 [N, G]
    # Codes are computed against the rounded scale and zero, so they are nearest for the stored pair.
    steps = (grouped - kernel_zeros.float()[..., None]) / scales.float()[..., None]  # [N, G, g]
    signed = steps.round().clamp(-(levels // 2), levels // 2 - 1)  # [N, G, g]
    codes = (signed + CODE_MID).to(torch.uint8).view(rows, groups * group_size)[:, :cols]  # [N, K]
    return QuantizedWeight(precision, codes.contiguous(), scales, zeros, group_size)


def float_zeros(precision: Precision, scales: Tensor, zeros: Tensor) -> Tensor:
    """The bf16 zeros [N, G] (the weight at code 8) the int4 kernels compute with, from a grouped
    weight's scales and stored zeros [N, G]: int4's own, or the int3/int2 integer zero point times the
    scale, rounded to bf16 as the kernels take it."""
    if not precision.is_bit_packed:
        return zeros
    return (zeros.float() * scales.float()).to(torch.bfloat16)  # [N, G]


def dequantize(q: QuantizedWeight, dtype: torch.dtype = torch.float32) -> Tensor:
    """The float [N, K] weight `q` stands for, computed in `dtype` on `q`'s device."""
    if q.precision.is_float:
        return q.values.to(dtype)
    assert q.scales is not None
    if q.precision == Precision.INT8:
        return q.values.to(dtype) * q.scales.to(dtype)[:, None]  # [N, K]
    assert q.zeros is not None
    cols = q.values.shape[1]
    scales = q.scales.to(dtype).repeat_interleave(q.group_size, dim=1)[:, :cols]  # [N, K]
    zeros = (
        float_zeros(q.precision, q.scales, q.zeros).to(dtype).repeat_interleave(q.group_size, dim=1)[:, :cols]
    )  # [N, K]
    return (q.values.to(dtype) - CODE_MID) * scales + zeros


def concat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """Stack weights of one precision and group size along the output dimension (rows are independent)."""
    first = parts[0]

    def cat(tensors: list[Tensor | None]) -> Tensor | None:
        return None if tensors[0] is None else torch.cat([t for t in tensors if t is not None])

    return QuantizedWeight(
        first.precision,
        torch.cat([p.values for p in parts]),
        cat([p.scales for p in parts]),
        cat([p.zeros for p in parts]),
        first.group_size,
    )
