"""Numeric precisions an expert can be stored and computed in, and what each costs in bytes.

The byte counts here are the single source of truth for budgets: the executor allocates exactly this
much for an expert in a precision, and the planner charges exactly this much against a tier's budget.
"""

from __future__ import annotations

import enum


class Precision(enum.StrEnum):
    """Storage precision of one expert's three weight matrices (w1, w3: [I, H]; w2: [H, I])."""

    FP32 = "fp32"
    """Full precision reference; on CPU the most accurate, and the slowest."""
    BF16 = "bf16"
    """16-bit brain float; the default full-quality precision."""
    FP16 = "fp16"
    """16-bit IEEE half; preferred over bf16 on some accelerators."""
    INT8 = "int8"
    """Symmetric per-output-row int8 with one bf16 scale per row."""
    INT4 = "int4"
    """Group-wise asymmetric round-to-nearest, 4-bit codes, bf16 scale and zero per group."""
    INT3 = "int3"
    """As int4 with 3-bit codes (8 levels); stored in the int4 layout, so it costs int4's bytes."""
    INT2 = "int2"
    """As int4 with 2-bit codes (4 levels); stored in the int4 layout, so it costs int4's bytes."""

    @property
    def bits(self) -> int:
        """Bits of information per weight (what quality depends on)."""
        return _BITS[self]

    @property
    def storage_bits(self) -> int:
        """Bits of storage per weight in the executor's kernel layout (what memory and bandwidth see)."""
        return _STORAGE_BITS[self]

    @property
    def is_grouped(self) -> bool:
        """True for the group-wise formats that carry a scale and a zero point per group."""
        return self in (Precision.INT4, Precision.INT3, Precision.INT2)

    @property
    def is_float(self) -> bool:
        return self in (Precision.FP32, Precision.BF16, Precision.FP16)

    @classmethod
    def parse(cls, text: str) -> Precision:
        """Parse a precision name (case-insensitive); raises ValueError naming the known ones."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown precision {text!r}; known: {known}") from None


_BITS = {
    Precision.FP32: 32,
    Precision.BF16: 16,
    Precision.FP16: 16,
    Precision.INT8: 8,
    Precision.INT4: 4,
    Precision.INT3: 3,
    Precision.INT2: 2,
}

_STORAGE_BITS = {**_BITS, Precision.INT3: 4, Precision.INT2: 4}

DEFAULT_GROUP_SIZE = 64
"""Weights per quantization group for the grouped formats."""

SCALE_BYTES = 2
"""Bytes of one scale or zero point (bf16)."""


def matrix_bytes(rows: int, cols: int, precision: Precision, group_size: int = DEFAULT_GROUP_SIZE) -> int:
    """Bytes one [rows, cols] weight matrix takes in `precision` (codes plus scales and zeros)."""
    code_bytes = rows * cols * precision.storage_bits // 8
    if precision == Precision.INT8:
        return code_bytes + rows * SCALE_BYTES
    if precision.is_grouped:
        groups = rows * -(-cols // group_size)
        return code_bytes + 2 * groups * SCALE_BYTES
    return code_bytes


def expert_bytes(
    hidden_size: int, intermediate_size: int, precision: Precision, group_size: int = DEFAULT_GROUP_SIZE
) -> int:
    """Bytes of one SwiGLU expert (w1, w3: [I, H]; w2: [H, I]) in `precision`."""
    up = matrix_bytes(intermediate_size, hidden_size, precision, group_size)
    down = matrix_bytes(hidden_size, intermediate_size, precision, group_size)
    return 2 * up + down


ROUTER_PRECISION = Precision.FP32
"""The routers stay full precision whatever the dense precision (moeqos.executor.moe): they are tiny, and
rounding them would change which experts a token goes to."""


def dense_bytes(params: int, router_params: int, precision: Precision = Precision.BF16) -> int:
    """Bytes the executor holds in memory for a model's non-expert weights: the one count that model
    info, the measured profile and what-if descriptions all report.

    `params`: non-expert weights other than the routers (attention, norms, embeddings, and the head
    unless tied to the embeddings), held in the dense `precision` (the executor's `dense_precision`,
    bf16 by default). `router_params`: the routers' weights (layers x experts x hidden), always held in
    ROUTER_PRECISION (fp32, 4 bytes each) whatever the dense precision or the checkpoint's dtype.
    """
    if not precision.is_float:
        raise ValueError(f"dense weights are held in a float precision, not {precision}")
    return (params * precision.storage_bits + router_params * ROUTER_PRECISION.storage_bits) // 8
