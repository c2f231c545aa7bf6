"""bf16 weights on the CPU as oneDNN's own prepacked layout, multiplied by oneDNN's linear op.

torch's `mm` sends a bf16 product to oneDNN with the weight in torch's plain [N, K] layout, and oneDNN
lays it out again for its kernel on every call: for one decode row that is most of the call. Reordered
once at build (`mkldnn._reorder_linear_weight`) and multiplied by `mkldnn._linear_pointwise`, the same
product costs 1.3-2.3x less on the 2-core AMD EPYC (60 distinct weights per shape, so they come from
memory as a decode step's do; µs per call, 2 threads: 576x576 39.6 -> 24; 3072x576 177 -> 114; 576x1536
121 -> 58; 1 to 48 rows all faster; `python -m moeqos.bench.kernels`), with results equal to `mm`'s bit
for bit on every shape and row count measured (the same oneDNN kernel, without the per-call reorder;
on a Xeon with AMX `mm` at 48 rows sums in another order, one bf16 rounding apart).
The packed tensor holds exactly the plain weight's bytes (the byte contract is unchanged) and is the
only copy kept: `portable()` lays it back out as a plain tensor when the disk cache, a device move or a
dequantize asks.

Only bf16, only where oneDNN computes bf16 natively, and only where the native kernels are not built
(`packed_bf16_fits`): fp32 stays on MKL's `mm` (the path whose greedy output equals transformers'), fp16
on the CPU has no native oneDNN support here. Where the native kernels are built, bf16 stays in the plain
layout: the C decode step (moeqos.executor.native_decode) reads only that one, and a layer with a packed
projection goes whole to the PyTorch step. On a 2-core Xeon with AMX and AVX512-BF16 (2026-12-05) packing
made the default model decode at 28.5 tok/s all-bf16 and 37.4 all-int4 against 52.8 and 92.6 plain
(median of 3 interleaved 64-token decodes), and the native bf16 kernel, one of the plain layout's timed
candidates (moeqos.executor.quant.gemv_paths), beat the packed one alone on one decode row too (576x576
20 vs 39 µs, 1536x576 72 vs 97, 576x1536 73 vs 104; only 3072x576 lost, 205 vs 172).

Shape legend: M rows of activations, K input features, N output features.
"""

from __future__ import annotations

from functools import cache

import torch
from moeqos.core.precision import Precision
from moeqos.executor.quant import native
from moeqos.executor.quant.rtn import QuantizedWeight
from torch import Tensor

_NO_POST_OP: list[object] = []
"""`_linear_pointwise`'s post-op arguments: no activation after the product."""


@cache
def _onednn_bf16() -> bool:
    """True if this torch has oneDNN and it computes bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an op this torch build does not register
        return False


def _native_kernels_built() -> bool:
    """True if moeqos's native kernels serve this process (their bf16 reads only the plain layout)."""
    return native.library() is not None


def packed_bf16_fits(precision: Precision, device: torch.device) -> bool:
    """True if a `precision` weight on `device` takes `PackedBf16CpuKernel` (see module docstring)."""
    return (
        precision == Precision.BF16
        and device.type == "cpu"
        and _onednn_bf16()
        and not _native_kernels_built()
    )


class PackedBf16CpuKernel:
    """A bf16 [N, K] weight in oneDNN's prepacked layout (see module docstring)."""

    def __init__(self, q: QuantizedWeight) -> None:
        assert q.precision == Precision.BF16 and q.values.dtype == torch.bfloat16
        self.group_size = q.group_size
        # Laid out for one row (the decode case); oneDNN computes any row count from it (measured faster
        # than `mm` at 1-48 rows).
        self.packed = torch.ops.mkldnn._reorder_linear_weight(q.values.contiguous(), 1)  # [N, K] opaque

    def matmul(self, x: Tensor) -> Tensor:
        if x.dtype != torch.bfloat16:
            return self._linear(x.to(torch.bfloat16)).to(x.dtype)  # [M, N]
        return self._linear(x)  # [M, N]

    def _linear(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", _NO_POST_OP, "")  # [M, N]

    def portable(self) -> QuantizedWeight:
        """The plain [N, K] bf16 weight (a new tensor: the packed one is the only copy kept)."""
        return QuantizedWeight(Precision.BF16, self.packed.to_dense(), group_size=self.group_size)
