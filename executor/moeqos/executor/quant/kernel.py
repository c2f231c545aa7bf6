"""What every matmul kernel behind a `QuantLinear` provides, and the two kernels that run anywhere.

A kernel owns one weight in whatever layout its device op wants. `matmul` takes activations of any float
dtype and answers in the same dtype; `portable` recovers the weight in the portable layout (for the disk
cache, for moving between devices, and for `dequantize`).

Shape legend: M rows of activations (tokens), K input features, N output features.
"""

from __future__ import annotations

from typing import Protocol

import torch.nn.functional as F
from moeqos.executor.quant import gemv_paths
from moeqos.executor.quant.rtn import QuantizedWeight, dequantize
from torch import Tensor


class Kernel(Protocol):
    """One weight matrix laid out for one device's matmul."""

    def matmul(self, x: Tensor) -> Tensor:
        """x [M, K] -> x @ W.T [M, N], in x's dtype."""
        ...

    def portable(self) -> QuantizedWeight:
        """The weight in the portable layout, on the kernel's device."""
        ...


class FloatKernel:
    """fp32 / bf16 / fp16 weight: x @ W.T in the weight's own dtype, through the op timed fastest for
    the shape and row count (moeqos.executor.quant.gemv_paths)."""

    def __init__(self, q: QuantizedWeight) -> None:
        self.q = q

    def matmul(self, x: Tensor) -> Tensor:
        weight = self.q.values  # [N, K]
        if x.dtype == weight.dtype:  # the usual case: no two no-op `to` calls (aten calls all the same)
            return gemv_paths.matmul(x, weight)  # [M, N]
        return F.linear(x.to(weight.dtype), weight).to(x.dtype)  # [M, N]

    def portable(self) -> QuantizedWeight:
        return self.q


class DequantKernel:
    """Any precision, any shape: dequantize, then F.linear in the activations' dtype.

    Used where no device kernel fits the shape (or none exists for the device); it keeps only the
    portable codes resident, so memory matches the byte contract and speed is what suffers.
    """

    def __init__(self, q: QuantizedWeight) -> None:
        self.q = q

    def matmul(self, x: Tensor) -> Tensor:
        # Dequantizing in fp32 first keeps (code - 8) * scale + zero from rounding twice in 16 bits.
        return F.linear(x, dequantize(self.q).to(x.dtype))  # [M, N]

    def portable(self) -> QuantizedWeight:
        return self.q
