"""Numeric precisions an expert can be stored and computed in, and what each costs in bytes.

The byte counts here are the single source of truth for budgets: the executor allocates exactly this
much for an expert in a precision, and the planner charges exactly this much against a tier's budget.

A grouped precision's name says its group size when it is not the plan's: `int4g32` is int4 with one
scale and zero per 32 weights, whatever the plan says; bare `int4` / `int3` / `int2` (today's names)
use the plan's `group_size`, DEFAULT_GROUP_SIZE (64) unless a plan sets another.
int3 and int2 codes are bit-packed (3 and 2 bits a weight; moeqos.executor.quant.packing), and their
zero points are integers, one byte a group (moeqos.executor.quant.rtn): with groups of 64 an int2 expert
is 19/36 of int4's bytes, int3 27/36 (groups of 32: 11/20 and 15/20).
"""

from __future__ import annotations

import enum

DEFAULT_GROUP_SIZE = 64
"""Weights per quantization group for the bare grouped names (int4/int3/int2) unless a plan sets another."""

GROUP_SIZES = (32, 64, 128)
"""Group sizes a grouped precision can name (DEFAULT_GROUP_SIZE by the bare name); all are ones the
int4 kernels take (moeqos.executor.quant.cpu_kernels.INT4_GROUP_SIZES)."""


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
    """As int4 with 3-bit codes (8 levels), bit-packed: 3 bits a weight, a bf16 scale and an integer
    zero point per group."""
    INT2 = "int2"
    """As int4 with 2-bit codes (4 levels), bit-packed: 2 bits a weight, a bf16 scale and an integer
    zero point per group."""
    INT4_G32 = "int4g32"
    """int4 with groups of 32 weights, whatever the plan's group size."""
    INT4_G128 = "int4g128"
    """int4 with groups of 128 weights."""
    INT3_G32 = "int3g32"
    """int3 with groups of 32 weights."""
    INT3_G128 = "int3g128"
    """int3 with groups of 128 weights."""
    INT2_G32 = "int2g32"
    """int2 with groups of 32 weights."""
    INT2_G128 = "int2g128"
    """int2 with groups of 128 weights."""

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
        return self.bits <= 4

    @property
    def is_bit_packed(self) -> bool:
        """True for the sub-4-bit formats, whose codes are stored `bits` bits a weight."""
        return self.bits < 4

    @property
    def group_size(self) -> int | None:
        """The group size this precision fixes (`int4g32`: 32), None where the plan's applies (bare
        int4/int3/int2) or the format has no groups."""
        return _FIXED_GROUP.get(self)

    def group(self, plan_group_size: int = DEFAULT_GROUP_SIZE) -> int:
        """The group size an expert in this precision is quantized with under a plan whose
        `group_size` is `plan_group_size`."""
        return self.group_size or plan_group_size

    @property
    def base(self) -> Precision:
        """The bare precision of the same bit-width (`int4g32` -> `int4`; others -> themselves)."""
        return _BASE.get(self, self)

    @classmethod
    def grouped(cls, bits: int, group_size: int | None) -> Precision:
        """The `bits`-bit grouped precision with a fixed `group_size` (None: the bare name)."""
        name = f"int{bits}" if group_size is None else f"int{bits}g{group_size}"
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"no precision {name!r}; group sizes: {GROUP_SIZES}") from None

    @property
    def is_float(self) -> bool:
        return self in (Precision.FP32, Precision.BF16, Precision.FP16)

    @classmethod
    def parse(cls, text: str) -> Precision:
        """Parse a precision name (case-insensitive); raises ValueError naming the known ones."""
        name = text.strip().lower()
        if name.endswith(f"g{DEFAULT_GROUP_SIZE}") and name[:-3] in ("int4", "int3", "int2"):
            name = name[:-3]  # the default group size has the bare name
        try:
            return cls(name)
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
    Precision.INT4_G32: 4,
    Precision.INT4_G128: 4,
    Precision.INT3_G32: 3,
    Precision.INT3_G128: 3,
    Precision.INT2_G32: 2,
    Precision.INT2_G128: 2,
}

_STORAGE_BITS = _BITS

_FIXED_GROUP = {p: int(p.value.split("g")[1]) for p in Precision if "g" in p.value}
_BASE = {p: Precision(p.value.split("g")[0]) for p in _FIXED_GROUP}

SCALE_BYTES = 2
"""Bytes of one scale, or of int4's / int8's zero point (bf16)."""

ZERO_POINT_BYTES = 1
"""Bytes of one bit-packed (int3/int2) group's zero point: an int8 number of scales."""


def group_bytes(precision: Precision) -> int:
    """Bytes a grouped precision stores per group besides its codes: a bf16 scale, and a bf16 zero
    (int4) or an integer zero point (int3/int2)."""
    return SCALE_BYTES + (ZERO_POINT_BYTES if precision.is_bit_packed else SCALE_BYTES)


def matrix_bytes(rows: int, cols: int, precision: Precision, group_size: int = DEFAULT_GROUP_SIZE) -> int:
    """Bytes one [rows, cols] weight matrix takes in `precision` (codes plus scales and zeros), under
    a plan whose group size is `group_size` (see Precision.group)."""
    code_bytes = packed_code_bytes(rows * cols, precision)
    if precision == Precision.INT8:
        return code_bytes + rows * SCALE_BYTES
    if precision.is_grouped:
        groups = rows * -(-cols // precision.group(group_size))
        return code_bytes + groups * group_bytes(precision)
    return code_bytes


def groups_fit(precision: Precision, hidden_size: int, intermediate_size: int, group_size: int) -> bool:
    """True unless `precision` is grouped and its group (under a plan's `group_size`) does not divide
    both expert dimensions (a group never straddles two rows of a fused matrix)."""
    group = precision.group(group_size)
    return not precision.is_grouped or (hidden_size % group == 0 and intermediate_size % group == 0)


def packed_code_bytes(count: int, precision: Precision) -> int:
    """Bytes of `count` weights' codes in `precision`: int2 four to a byte, int3 as a 2-bit plane and a
    1-bit plane (the one count of moeqos.executor.quant.packing), everything else `storage_bits` a
    weight."""
    if precision.bits == 3:
        return -(-count // 4) + -(-count // 8)
    if precision.bits == 2:
        return -(-count // 4)
    return count * precision.storage_bits // 8


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
