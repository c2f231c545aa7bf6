"""Per-expert quantized weights (fp32/bf16/fp16/int8/int4/int3/int2) and the kernels that run them.

`quantize_linear` / `QuantExpert.from_weights` quantize float weights (round to nearest) and lay them out
for a device's kernel; `reference` holds the pure-PyTorch definition every kernel is tested against.
"""

from moeqos.executor.quant.expert import QuantExpert
from moeqos.executor.quant.linear import QuantLinear, quantize_linear
from moeqos.executor.quant.reference import (
    QUANT_ERROR_BOUNDS,
    kernel_error_bound,
    quantize_dequantize,
    reference_expert_forward,
    relative_error,
)
from moeqos.executor.quant.rtn import QuantizedWeight

__all__ = [
    "QUANT_ERROR_BOUNDS",
    "QuantExpert",
    "QuantLinear",
    "QuantizedWeight",
    "kernel_error_bound",
    "quantize_dequantize",
    "quantize_linear",
    "reference_expert_forward",
    "relative_error",
]
