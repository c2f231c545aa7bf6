"""`QuantLinear`: one weight matrix in one precision, computed with the fastest kernel that fits.

Which kernel runs is a function of precision, shape and device, and of timings taken once per process
(within the float kernel, which op computes a few rows: moeqos.executor.quant.gemv_paths; whether the
native kernels serve int8 and int4: moeqos.executor.quant.native):

| precision        | CPU                                   | CUDA                    |
|------------------|---------------------------------------|-------------------------|
| bf16             | oneDNN, weight prepacked once, where  | `mm`                    |
|                  | the native kernels are not built      |                         |
|                  | (onednn_kernels); else as fp32        |                         |
| fp32, fp16       | `mm` or `mv`, timed (gemv_paths)      | `mm`                    |
| int8             | `_weight_int8pack_mm` (K % 32 == 0);  | dequantize + F.linear   |
|                  | native `q8_mm` for <= 4 rows *        |                         |
| int4             | `_weight_int4pack_mm_for_cpu`, or     | `_weight_int4pack_mm`   |
|                  | native `q4_mm` (K % 64 == 0) *        |                         |
| int3, int2       | unpack per call + the int4 op         | same                    |

(* where moeqos.executor.quant.native is built and timed faster than torch's op in this process; where
bf16 is not prepacked, the native bf16 kernel is one of gemv_paths' timed candidates), and any shape a
device op does not take goes through dequantize + F.linear (`DequantKernel`; for the
bit-packed int3/int2, `UnpackDequantKernel`, which keeps them bit-packed). The int4 op's group sizes are
those of cpu_kernels.INT4_GROUP_SIZES; every group size a precision can name is one of them.
The module holds no parameters or buffers: kernel layouts are device-specific, so `nn.Module.to` would
move bytes into a layout the other device cannot read. Use `to_device` instead.
"""

from __future__ import annotations

import torch
from moeqos.core.precision import DEFAULT_GROUP_SIZE, Precision, matrix_bytes
from moeqos.executor.quant import cpu_kernels, cuda_kernels
from moeqos.executor.quant.kernel import DequantKernel, FloatKernel, Kernel
from moeqos.executor.quant.onednn_kernels import PackedBf16CpuKernel, packed_bf16_fits
from moeqos.executor.quant.packed_kernels import UnpackDequantKernel, UnpackInt4Kernel
from moeqos.executor.quant.rtn import QuantizedWeight, dequantize, quantize
from moeqos.executor.quant.state import weight_from_state, weight_to_state
from torch import Tensor, nn


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` with a CUDA index filled in, so "cuda" and "cuda:0" compare equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def build_kernel(q: QuantizedWeight, device: torch.device) -> Kernel:
    """The kernel for `q` (already on `device`); see the module table."""
    rows, cols = q.shape
    if q.precision.is_float:
        return PackedBf16CpuKernel(q) if packed_bf16_fits(q.precision, device) else FloatKernel(q)
    if q.precision.is_bit_packed:
        return _bit_packed_kernel(q, device)
    if device.type == "cpu":
        if q.precision == Precision.INT8 and cpu_kernels.int8_fits(rows, cols):
            return cpu_kernels.Int8CpuKernel(q)
        if q.precision.is_grouped and cpu_kernels.int4_fits(rows, cols, q.group_size):
            return cpu_kernels.Int4CpuKernel(q)
    grouped = q.precision.is_grouped
    if device.type == "cuda" and grouped and cuda_kernels.int4_fits(rows, cols, q.group_size, device):
        return cuda_kernels.Int4CudaKernel(q)
    return DequantKernel(q)


def _bit_packed_kernel(q: QuantizedWeight, device: torch.device) -> Kernel:
    """int3/int2: through the device's int4 op where it fits the shape (the faster path, measured in
    moeqos.executor.quant.packed_kernels), else unpack + dequantize."""
    rows, cols = q.shape
    if device.type == "cpu" and cpu_kernels.int4_fits(rows, cols, q.group_size):
        return UnpackInt4Kernel(q, cpu_kernels.INT4_OP)
    if device.type == "cuda" and cuda_kernels.int4_fits(rows, cols, q.group_size, device):
        return UnpackInt4Kernel(q, cuda_kernels.INT4_OP)
    return UnpackDequantKernel(q)


class QuantLinear(nn.Module):
    """y = x @ W.T for one [out, in] weight stored in `precision` (no bias)."""

    def __init__(self, q: QuantizedWeight, device: str | torch.device = "cpu") -> None:
        device = resolve_device(device)
        self._assemble(build_kernel(q.to(device), device), q.precision, q.shape, q.group_size, device)

    def _assemble(
        self,
        kernel: Kernel,
        precision: Precision,
        shape: tuple[int, int],
        group_size: int,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.precision: Precision = precision
        self.out_features, self.in_features = shape
        self.group_size: int = group_size
        self.device = device
        self.kernel: Kernel = kernel

    @classmethod
    def from_packed_state(
        cls, state: dict[str, Tensor], precision: Precision, group_size: int, prefix: str = ""
    ) -> QuantLinear:
        """A CPU int4-kernel weight from `packed_state` output (same machine layout; see
        cpu_kernels.int4_layout_tag)."""
        group_size = precision.group(group_size)
        kernel = cpu_kernels.Int4CpuKernel.from_packed(
            precision, group_size, state[prefix + "packed"], state[prefix + "scales_zeros"]
        )
        linear = cls.__new__(cls)
        linear._assemble(kernel, precision, kernel.shape, group_size, torch.device("cpu"))
        return linear

    def packed_state(self, prefix: str = "") -> dict[str, Tensor] | None:
        """The weight in its kernel's own layout when that is the CPU int4 packing (None otherwise: the
        portable layout is then the kernel's, or the kernel is on another device)."""
        if not isinstance(self.kernel, cpu_kernels.Int4CpuKernel):
            return None
        return {prefix + key: t.contiguous() for key, t in self.kernel.packed_state().items()}

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in] of any float dtype -> [..., out] in x's dtype."""
        if x.numel() == 0:  # no tokens routed here; some device ops reject an empty launch
            return x.new_zeros(*x.shape[:-1], self.out_features)
        if x.dim() == 2:
            return self.kernel.matmul(x)  # [M, out]
        flat = x.reshape(-1, self.in_features)  # [M, in]
        return self.kernel.matmul(flat).reshape(*x.shape[:-1], self.out_features)  # [..., out]

    def nbytes(self) -> int:
        """Bytes of this weight by the byte contract (`moeqos.core.precision.matrix_bytes`)."""
        return matrix_bytes(self.out_features, self.in_features, self.precision, self.group_size)

    def portable(self) -> QuantizedWeight:
        """The weight in the portable layout, on this module's device."""
        return self.kernel.portable()

    def dequantize(self) -> Tensor:
        """The fp32 [out, in] weight this module computes with."""
        return dequantize(self.portable())

    def to_state(self, prefix: str = "") -> dict[str, Tensor]:
        """Portable CPU tensors (see `moeqos.executor.quant.state`), keys prefixed by `prefix`."""
        return weight_to_state(self.portable(), prefix)

    @classmethod
    def from_state(
        cls,
        state: dict[str, Tensor],
        precision: Precision,
        group_size: int = DEFAULT_GROUP_SIZE,
        device: str | torch.device = "cpu",
        prefix: str = "",
    ) -> QuantLinear:
        """Rebuild from `to_state` output, with the kernel layout of `device`."""
        return cls(weight_from_state(state, precision, group_size, prefix), device)

    def to_device(self, device: str | torch.device) -> QuantLinear:
        """This weight on `device`, re-laid out for that device's kernel; `self` if already there
        (nothing mutates a QuantLinear, so sharing is safe and a copy-on-use costs nothing)."""
        if resolve_device(device) == self.device:
            return self
        return QuantLinear(self.portable(), device)

    def extra_repr(self) -> str:
        kernel = type(self.kernel).__name__
        return (
            f"{self.in_features} -> {self.out_features}, {self.precision}, group {self.group_size}, {kernel}"
        )


def quantize_linear(
    weight: Tensor,
    precision: Precision,
    group_size: int = DEFAULT_GROUP_SIZE,
    device: str | torch.device = "cpu",
) -> QuantLinear:
    """Quantize a float [out, in] weight (RTN) and lay it out for `device`'s kernel."""
    return QuantLinear(quantize(weight, Precision.parse(precision), group_size), device)
