"""The dense part of a plan: the precision of the non-expert weights that decode reads every token.

Two elements carry a precision of their own, chosen by the planner like an expert's:
- `attn`: the q/k/v/o projections of every decoder layer (one element: its quality effect is measured
  once per precision, as a whole, so the profile stays two measurements per precision);
- `head`: the lm head, the largest single matrix a decode step reads.
Both always live on the executor's device tier (dense weights are resident). Embeddings, norms and
routers stay in the model's dense precision: an embedding lookup reads one row per token, so quantizing
it saves memory but no decode time, and the routers stay fp32 (moeqos.core.precision.ROUTER_PRECISION).

An element a plan does not name is in the model's dense precision (the executor's `dense_precision`),
so a plan without a dense part means what it always meant.

Bytes (the byte contract, moeqos.core.precision.matrix_bytes): an element in a precision holds its
matrices in that precision. A head tied to the embeddings holds nothing of its own in the dense
precision (it *is* the embedding matrix); in any other precision it is a separate quantized copy, so
quantizing a tied head costs memory and saves time. Budgets charge a plan's dense part on the device
tier by its bytes minus those of the dense precision (`DenseTable.delta_bytes`): with no dense part a
budget means exactly what it meant before, and a smaller dense part leaves room for experts.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from moeqos.core.precision import DEFAULT_GROUP_SIZE, Precision, matrix_bytes


class DenseElement(enum.StrEnum):
    """A group of dense weights that takes one precision in a plan."""

    ATTN = "attn"
    """The q/k/v/o projections of every decoder layer."""
    HEAD = "head"
    """The lm head (output projection to the vocabulary)."""

    @classmethod
    def parse(cls, text: str) -> DenseElement:
        """Parse an element name; ValueError naming the known ones."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            known = ", ".join(e.value for e in cls)
            raise ValueError(f"unknown dense element {text!r}; known: {known}") from None


DensePrecisions = tuple[tuple[DenseElement, Precision], ...]
"""A plan's dense part: (element, precision) pairs in element order, each element at most once;
elements not listed are in the model's dense precision."""


def dense_precisions(pairs: Mapping[DenseElement, Precision] | Iterable[tuple[str, str]]) -> DensePrecisions:
    """The canonical DensePrecisions of `pairs` (names or enums); ValueError on an unknown name or an
    element given twice."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    parsed = [(DenseElement.parse(str(e)), Precision.parse(str(p))) for e, p in items]
    elements = [e for e, _ in parsed]
    if len(set(elements)) != len(elements):
        raise ValueError(f"a dense element is given twice: {[e.value for e in elements]}")
    order = list(DenseElement)
    return tuple(sorted(parsed, key=lambda pair: order.index(pair[0])))


@dataclass(frozen=True)
class DenseShapes:
    """The weight shapes of the dense elements of one model ([out, in] per matrix)."""

    attention: tuple[tuple[int, int], ...]
    """Every q/k/v/o projection of every layer."""
    head: tuple[int, int]
    """The lm head, [vocab, hidden]."""
    tied_head: bool
    """The head shares the input embeddings' matrix."""

    @classmethod
    def mixtral(
        cls, layers: int, hidden: int, heads: int, kv_heads: int, vocab: int, tied: bool, head_dim: int = 0
    ) -> DenseShapes:
        """Shapes of a Mixtral-style model (grouped-query attention; `head_dim` 0: hidden / heads)."""
        dim = head_dim or hidden // heads
        per_layer = (
            (heads * dim, hidden),
            (kv_heads * dim, hidden),
            (kv_heads * dim, hidden),
            (hidden, heads * dim),
        )
        return cls(per_layer * layers, (vocab, hidden), tied)

    def element_bytes(
        self,
        element: DenseElement,
        precision: Precision,
        dense: Precision,
        group_size: int = DEFAULT_GROUP_SIZE,
    ) -> int:
        """Bytes `element` holds in `precision` when the model's dense precision is `dense`: what a token
        reads from it, except a tied head in the dense precision, which is the embedding matrix."""
        if element == DenseElement.HEAD and self.tied_head and precision == dense:
            return 0
        return self.read_bytes(element, precision, group_size)

    def read_bytes(
        self, element: DenseElement, precision: Precision, group_size: int = DEFAULT_GROUP_SIZE
    ) -> int:
        """Bytes one decode token reads from `element` in `precision`: all of its matrices (a tied head
        in the dense precision holds nothing of its own but reads the embedding matrix, all of it)."""
        if element == DenseElement.HEAD:
            return matrix_bytes(*self.head, precision, group_size)
        return sum(matrix_bytes(rows, cols, precision, group_size) for rows, cols in self.attention)

    def read_delta(
        self, plan_dense: DensePrecisions, dense: Precision, group_size: int = DEFAULT_GROUP_SIZE
    ) -> int:
        """Bytes a decode token reads from the dense elements under `plan_dense` beyond (negative: below)
        what it reads with every element in the model's dense precision `dense`."""
        return sum(
            self.read_bytes(e, p, group_size) - self.read_bytes(e, dense, group_size) for e, p in plan_dense
        )

    def table(self, dense: Precision, group_size: int = DEFAULT_GROUP_SIZE) -> DenseTable:
        """Bytes of every element in every precision."""
        return DenseTable(
            dense,
            {e: {p: self.element_bytes(e, p, dense, group_size) for p in Precision} for e in DenseElement},
        )


@dataclass(frozen=True)
class DenseTable:
    """Bytes of each dense element per precision, and the model's dense precision they default to."""

    dense: Precision
    bytes: Mapping[DenseElement, Mapping[Precision, int]]

    def delta_bytes(self, plan_dense: DensePrecisions) -> int:
        """Bytes the plan's dense part holds beyond (negative: below) the all-default dense part."""
        return sum(self.bytes[e][p] - self.bytes[e][self.dense] for e, p in plan_dense)


@dataclass(frozen=True)
class DenseCost:
    """What one dense element costs in one precision (a profile measures these; what-if derives them)."""

    element: DenseElement
    precision: Precision
    bytes: int
    """Bytes the element holds in this precision (`DenseShapes.element_bytes`)."""
    seconds: float
    """Decode seconds per token the element's matrices take in this precision."""
    log_ppl: float
    """Increase of log-perplexity over the reference with only this element in this precision (0 in
    the dense precision)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> DenseCost:
        return cls(
            DenseElement.parse(str(data["element"])),
            Precision.parse(str(data["precision"])),
            int(str(data["bytes"])),
            float(str(data["seconds"])),
            float(str(data["log_ppl"])),
        )


@dataclass(frozen=True)
class DenseStatus:
    """One dense element as an executor serves it (GetInfo)."""

    element: DenseElement
    precision: Precision
    bytes: int
    """Bytes it holds (0 for a tied head in the dense precision)."""


@dataclass(frozen=True)
class DenseCharge:
    """What a plan's dense part charges the tier budgets: its bytes beyond (or below) those of the
    dense precision, on the device tier (see the module docstring)."""

    shapes: DenseShapes
    dense: Precision
    """The model's dense precision (what budgets already leave out)."""
    device: str
    """The tier dense weights live in."""
    _tables: dict[int, DenseTable] = field(default_factory=dict, init=False, repr=False, compare=False)
    """The bytes table per plan group size, built on first use (the shapes never change)."""

    def bytes_per_tier(self, plan_dense: DensePrecisions, group_size: int) -> dict[str, int]:
        """{device: delta bytes}, or {} when the plan's dense part costs what the default does."""
        table = self._tables.get(group_size)
        if table is None:
            table = self._tables.setdefault(group_size, self.shapes.table(self.dense, group_size))
        delta = table.delta_bytes(plan_dense)
        return {self.device: delta} if delta else {}


def nearest_cost(measured: Mapping[Precision, DenseCost], precision: Precision) -> DenseCost:
    """An element's cost in `precision` from its `measured` costs (not empty): the measured one, else
    that of the measured precision nearest in stored bits (the more accurate on a tie): int3 and int2
    borrow int4's timing."""
    if precision in measured:
        return measured[precision]
    return min(
        measured.values(),
        key=lambda c: (abs(c.precision.storage_bits - precision.storage_bits), c.precision.bits),
    )


def timed_within_fixed(
    costs: Iterable[DenseCost], dense: Precision, fixed_seconds: float
) -> tuple[DenseCost, ...]:
    """`costs` with their seconds scaled down, when the dense precision's exceed `fixed_seconds`, to fit
    inside it: the dense part in the dense precision is part of a step's fixed time, and a cold timing
    of its matrices alone can exceed it (noise on a busy machine), which would price a lossy element's
    saving above the whole fixed time."""
    costs = tuple(costs)
    defaults = sum(c.seconds for c in costs if c.precision == dense)
    scale = min(1.0, fixed_seconds / defaults) if defaults > 0 else 1.0
    return tuple(replace(c, seconds=c.seconds * scale) for c in costs)


def costs_by_element(costs: Iterable[DenseCost]) -> dict[DenseElement, dict[Precision, DenseCost]]:
    """`costs` as element -> precision -> cost (a later cost of the same pair replaces an earlier)."""
    table: dict[DenseElement, dict[Precision, DenseCost]] = {}
    for cost in costs:
        table.setdefault(cost.element, {})[cost.precision] = cost
    return table


def element_seconds(measured: Mapping[Precision, DenseCost], dense: Precision, precision: Precision) -> float:
    """Seconds per token an element adds in `precision` over `dense`, from its `measured` costs (the
    nearest measured precision's for an unmeasured one); 0 without a cost in `dense`, as such an
    element cannot be chosen."""
    if dense not in measured:
        return 0.0
    return nearest_cost(measured, precision).seconds - measured[dense].seconds


def added_seconds(costs: Iterable[DenseCost], dense: Precision, plan_dense: DensePrecisions) -> float:
    """Seconds per token `plan_dense` adds over the dense part in `dense` (negative: saves), from the
    elements' `costs` (`element_seconds` of each)."""
    table = costs_by_element(costs)
    return sum(element_seconds(table.get(element, {}), dense, precision) for element, precision in plan_dense)
