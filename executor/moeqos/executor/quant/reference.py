"""The pure-PyTorch reference: what a weight becomes in a precision, and a naive fp32 expert forward.

Kernels are checked against this (tests/executor/test_quant_*.py). Error is relative output error,
||y - y_ref|| / ||y_ref||, for random Gaussian weights and activations. Two bounds per precision:
quantization error, the reference on the quantized weight against fp32 on the original weight
(`QUANT_ERROR_BOUNDS`); and kernel error, any `QuantLinear` path against the reference on the same
quantized weight (`kernel_error_bound`), which covers activations and outputs rounded to bf16 around the
integer kernels and 16-bit float matmuls:

| precision | quantization (group 32/64/128) | kernel, fp32 activations | kernel, bf16/fp16 activations |
|-----------|--------------------------------|--------------------------|-------------------------------|
| fp32      | 1e-6                           | 1e-5                     | 1e-2                          |
| bf16      | 8e-3                           | 1e-2                     | 1e-2                          |
| fp16      | 1e-3                           | 1e-2                     | 1e-2                          |
| int8      | 1.5e-2                         | 1e-2                     | 1e-2                          |
| int4      | 0.15                           | 1e-2                     | 1e-2                          |
| int3      | 0.3                            | 1e-2                     | 1e-2                          |
| int2      | 0.7                            | 1e-2                     | 1e-2                          |

Typical values seen: bf16 1.7e-3, fp16 2e-4, int8 7e-3, int4 9e-2, int3 0.2, int2 0.43 (group 64); kernels
2.4e-3 (one bf16 rounding). Where the native kernel serves int4 (moeqos.executor.quant.native:
activations rounded to int8 per 32 values, as llama.cpp's Q8_0) its bound is `NATIVE_INT4_BOUND`
instead: 1.5-2.5e-2 seen for one matmul on Gaussian activations, up to 5.4e-2 for a whole expert (its
down projection's input, the gated product, is heavy-tailed). The native int8 kernel rounds them to
int16 and keeps the common bound. Real weights with outliers quantize worse than Gaussian ones; the executor
measures that per expert (`Profile.quant_error`); these bounds exist to catch broken math.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from moeqos.core.precision import Precision
from moeqos.executor.quant import native
from moeqos.executor.quant.rtn import dequantize, quantize
from torch import Tensor

QUANT_ERROR_BOUNDS: dict[Precision, float] = {
    Precision.FP32: 1e-6,
    Precision.BF16: 8e-3,
    Precision.FP16: 1e-3,
    Precision.INT8: 1.5e-2,
    Precision.INT4: 0.15,
    Precision.INT3: 0.3,
    Precision.INT2: 0.7,
}
QUANT_ERROR_BOUNDS |= {p: QUANT_ERROR_BOUNDS[p.base] for p in Precision if p.group_size}
"""Relative output error of RTN quantization against the fp32 weight (see the module table; a precision
naming its group size has its bit-width's bound)."""


NATIVE_INT4_BOUND = 3e-2
"""`kernel_error_bound` of int4 where the native kernel serves it (see the module docstring)."""


def kernel_error_bound(precision: Precision, activation_dtype: torch.dtype) -> float:
    """Bound on a kernel's relative output error against `reference_linear` on the same weight, on the
    CPU in this process (whether the native kernel serves int4 is measured per process)."""
    if precision.is_grouped and not precision.is_bit_packed and native.preferred("int4"):
        return NATIVE_INT4_BOUND
    exact = precision == Precision.FP32 and activation_dtype == torch.float32
    return 1e-5 if exact else 1e-2


def quantize_dequantize(weight: Tensor, precision: Precision, group_size: int = 64) -> Tensor:
    """What `weight` [N, K] becomes when stored in `precision` (RTN), as fp32 [N, K]."""
    return dequantize(quantize(weight, precision, group_size))


def reference_linear(x: Tensor, weight: Tensor) -> Tensor:
    """Naive fp32 x @ weight.T; x [..., K], weight [N, K] -> [..., N] fp32."""
    return x.float() @ weight.float().T


def relative_error(y: Tensor, y_ref: Tensor) -> float:
    """||y - y_ref|| / ||y_ref|| in fp32 (Frobenius norms)."""
    y_ref = y_ref.float()
    return float((y.float() - y_ref).norm() / y_ref.norm().clamp_min(1e-30))


def reference_expert_forward(w1: Tensor, w2: Tensor, w3: Tensor, x: Tensor) -> Tensor:
    """SwiGLU expert in fp32: w2(silu(w1 x) * (w3 x)); w1, w3 [I, H], w2 [H, I], x [T, H] -> [T, H] fp32."""
    gate = F.silu(reference_linear(x, w1))  # [T, I]
    up = reference_linear(x, w3)  # [T, I]
    return reference_linear(gate * up, w2)  # [T, H]


def reference_quant_expert_forward(
    w1: Tensor, w2: Tensor, w3: Tensor, x: Tensor, precision: Precision, group_size: int = 64
) -> Tensor:
    """`reference_expert_forward` on the weights as they become in `precision`."""
    w1q, w2q, w3q = (quantize_dequantize(w, precision, group_size) for w in (w1, w2, w3))
    return reference_expert_forward(w1q, w2q, w3q, x)
