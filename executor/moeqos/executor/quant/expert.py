"""`QuantExpert`: a SwiGLU expert, y = w2(silu(w1 x) * (w3 x)), in one precision.

w1 and w3 are stored as one fused [2I, H] matrix (w1 rows first), so a forward pass is two kernel calls
instead of three. Quantization is per row (int8) or per group within a row (int4/3/2), so fusing changes
no code, scale or byte: the fused matrix is exactly the two quantized separately.

Shape legend: T tokens, H hidden size, I intermediate size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from moeqos.core.precision import DEFAULT_GROUP_SIZE, Precision, expert_bytes
from moeqos.executor.quant.linear import QuantLinear
from moeqos.executor.quant.rtn import concat_rows, quantize
from torch import Tensor, nn


class QuantExpert(nn.Module):
    """One expert's weights in one precision, laid out for one device."""

    def __init__(self, w13: QuantLinear, w2: QuantLinear) -> None:
        super().__init__()
        if w13.out_features != 2 * w2.in_features or w13.in_features != w2.out_features:
            raise ValueError(f"w13 {w13.out_features}x{w13.in_features} does not match w2 {w2}")
        self.w13 = w13
        self.w2 = w2
        self.precision: Precision = w13.precision
        self.group_size: int = w13.group_size
        self.hidden_size: int = w2.out_features
        self.intermediate_size: int = w2.in_features

    @classmethod
    def from_weights(
        cls,
        w1: Tensor,
        w2: Tensor,
        w3: Tensor,
        precision: Precision,
        group_size: int = DEFAULT_GROUP_SIZE,
        device: str | torch.device = "cpu",
    ) -> QuantExpert:
        """Quantize float weights w1, w3 [I, H] and w2 [H, I] into `precision` on `device`."""
        precision = Precision.parse(precision)
        w13 = concat_rows([quantize(w, precision, group_size) for w in (w1, w3)])  # [2I, H]
        return cls(QuantLinear(w13, device), QuantLinear(quantize(w2, precision, group_size), device))

    def forward(self, x: Tensor) -> Tensor:
        """x [T, H] -> [T, H] in x's dtype."""
        gate, up = self.w13(x).chunk(2, dim=-1)  # [T, I] each
        return self.w2(F.silu(gate) * up)  # [T, H]

    def nbytes(self) -> int:
        """Bytes of this expert by the byte contract (`moeqos.core.precision.expert_bytes`)."""
        return expert_bytes(self.hidden_size, self.intermediate_size, self.precision, self.group_size)

    def to_state(self) -> dict[str, Tensor]:
        """Portable contiguous CPU tensors (keys `w13.*`, `w2.*`), ready for safetensors."""
        return self.w13.to_state("w13.") | self.w2.to_state("w2.")

    @classmethod
    def from_state(
        cls,
        state: dict[str, Tensor],
        precision: Precision,
        group_size: int = DEFAULT_GROUP_SIZE,
        device: str | torch.device = "cpu",
    ) -> QuantExpert:
        """Rebuild from `to_state` output with `device`'s kernel layout."""
        precision = Precision.parse(precision)
        w13 = QuantLinear.from_state(state, precision, group_size, device, prefix="w13.")
        w2 = QuantLinear.from_state(state, precision, group_size, device, prefix="w2.")
        return cls(w13, w2)

    def packed_state(self) -> dict[str, Tensor] | None:
        """Both matrices in the CPU int4 kernel layout (keys `w13.*`, `w2.*`), or None when either is not
        in it (see QuantLinear.packed_state)."""
        w13, w2 = self.w13.packed_state("w13."), self.w2.packed_state("w2.")
        return None if w13 is None or w2 is None else w13 | w2

    @classmethod
    def from_packed_state(
        cls, state: dict[str, Tensor], precision: Precision, group_size: int = DEFAULT_GROUP_SIZE
    ) -> QuantExpert:
        """A CPU expert from `packed_state` output written on a machine with the same layout tags."""
        precision = Precision.parse(precision)
        w13 = QuantLinear.from_packed_state(state, precision, group_size, prefix="w13.")
        w2 = QuantLinear.from_packed_state(state, precision, group_size, prefix="w2.")
        return cls(w13, w2)

    def to_device(self, device: str | torch.device) -> QuantExpert:
        """This expert on `device` (e.g. a host-RAM expert copied to the GPU for one call); `self` if it
        is already there, since nothing mutates an expert."""
        w13, w2 = self.w13.to_device(device), self.w2.to_device(device)
        return self if w13 is self.w13 and w2 is self.w2 else QuantExpert(w13, w2)
