"""What a plan's dense part adds to the predictions, from a profile's DenseCosts (moeqos.core.dense).

Per element and precision p, relative to the dense precision d:
    seconds/token += seconds[e][p] - seconds[e][d]      (the latency model's dense regressors)
    log-ppl       += log_ppl[e][p]                      (0 for d; additive like the experts' terms)
    device bytes  += bytes[e][p] - bytes[e][d]          (the byte contract's delta, as budgets charge it)
A precision the profile did not measure borrows the seconds of the measured one nearest in bits
(int3/int2 from int4), its log-ppl scaled by the priors' ratio (moeqos.planner.priors) and its
prediction labelled an estimate; its bytes are the nearest one's scaled by the byte contract's bytes
per weight of the two at the profile's group size (exact for grouped precisions whose groups divide the
matrices' columns, as the profile's own grouped measurements need). With no DenseCosts at all the model
is empty: only the dense precision is offered, and every term is 0 (plans as before dense elements).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moeqos.core.dense import (
    DenseCost,
    DenseElement,
    DensePrecisions,
    costs_by_element,
    element_seconds,
    nearest_cost,
    timed_within_fixed,
)
from moeqos.core.precision import DEFAULT_GROUP_SIZE, Precision, matrix_bytes
from moeqos.core.profile import Profile
from moeqos.planner.priors import PRIOR_LOG_PPL_INCREASE

Table = Mapping[DenseElement, Mapping[Precision, DenseCost]]

_PER_WEIGHT_ROW = 1024
"""Weights in the row `DenseModel` prices a precision's bytes per weight on (a multiple of every group
size and of the 8 codes the bit-packed formats pack together)."""


@dataclass(frozen=True)
class DenseModel:
    """The dense elements' measured costs (plain data; `to_dict`/`from_dict`)."""

    dense: Precision = Precision.BF16
    """The model's dense precision (what an element a plan does not name is in)."""
    costs: tuple[DenseCost, ...] = ()
    device: str = "cpu"
    """The tier dense weights live in (the executor's device)."""
    group_size: int = DEFAULT_GROUP_SIZE
    """The group size the costs were measured under (the profile's)."""
    _table: dict[DenseElement, dict[Precision, DenseCost]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        table = costs_by_element(self.costs)
        usable = {e: row for e, row in table.items() if self.dense in row}  # deltas need the default
        object.__setattr__(self, "_table", usable)

    @classmethod
    def fit(cls, profile: Profile) -> DenseModel:
        """The profile's DenseCosts, their seconds scaled to fit inside the fixed time when they exceed
        it: the dense part in the dense precision is part of the fixed time, and a cold timing of its
        matrices alone can exceed it (noise on a busy machine), which would predict negative seconds."""
        costs = timed_within_fixed(profile.dense_costs, profile.dense_precision, profile.fixed_seconds)
        return cls(profile.dense_precision, costs, profile.hardware.device, profile.group_size)

    # ----- what can be chosen -------------------------------------------------------------------
    @property
    def elements(self) -> list[DenseElement]:
        """The elements with measurements (the others stay in the dense precision)."""
        return [e for e in DenseElement if e in self._table]

    def precisions(self, element: DenseElement) -> list[Precision]:
        """The measured precisions of `element`, the dense precision first."""
        row = self._table.get(element, {})
        return [self.dense, *(p for p in row if p != self.dense)]

    # ----- per element --------------------------------------------------------------------------
    def seconds(self, element: DenseElement, precision: Precision) -> float:
        """Seconds per token `element` in `precision` adds over the dense precision."""
        return element_seconds(self._table.get(element, {}), self.dense, precision)

    def log_ppl(self, element: DenseElement, precision: Precision) -> float:
        """Log-perplexity increase of `element` in `precision`."""
        if precision == self.dense:
            return 0.0
        if element not in self._table:  # pessimistic: the prior assumes every weight in `precision`
            return PRIOR_LOG_PPL_INCREASE[precision]
        nearest = self._nearest(element, precision)
        if nearest.precision == precision:
            return nearest.log_ppl
        prior = PRIOR_LOG_PPL_INCREASE[nearest.precision]
        return nearest.log_ppl * PRIOR_LOG_PPL_INCREASE[precision] / prior if prior > 0 else nearest.log_ppl

    def bytes(self, element: DenseElement, precision: Precision) -> int:
        """Bytes `element` in `precision` holds beyond the dense precision's (the budget charge)."""
        if element not in self._table:
            return 0
        return self._held(element, precision) - self._table[element][self.dense].bytes

    def _held(self, element: DenseElement, precision: Precision) -> int:
        """Bytes `element` holds in `precision`: measured, else the nearest measured precision's scaled
        by the byte contract's bytes per weight (a row of _PER_WEIGHT_ROW weights, which every group
        size divides)."""
        nearest = self._nearest(element, precision)
        if nearest.precision == precision:
            return nearest.bytes
        ratio = self._row_bytes(precision) / self._row_bytes(nearest.precision)
        return round(nearest.bytes * ratio)

    def _row_bytes(self, precision: Precision) -> int:
        return matrix_bytes(1, _PER_WEIGHT_ROW, precision, self.group_size)

    def _nearest(self, element: DenseElement, precision: Precision) -> DenseCost:
        return nearest_cost(self._table[element], precision)

    # ----- per plan -----------------------------------------------------------------------------
    def plan_seconds(self, dense: DensePrecisions) -> float:
        return sum(self.seconds(e, p) for e, p in dense)

    def plan_log_ppl(self, dense: DensePrecisions) -> float:
        return sum(self.log_ppl(e, p) for e, p in dense)

    def plan_bytes(self, dense: DensePrecisions) -> dict[str, int]:
        """{device: bytes beyond the dense precision's}, {} when none."""
        delta = sum(self.bytes(e, p) for e, p in dense)
        return {self.device: delta} if delta else {}

    def is_estimate(self, dense: DensePrecisions) -> bool:
        """True when a named precision was not measured for its element."""
        return any(p != self.dense and p not in self._table.get(e, {}) for e, p in dense)

    # ----- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "dense": self.dense.value,
            "device": self.device,
            "group_size": self.group_size,
            "costs": [
                {
                    "element": c.element.value,
                    "precision": c.precision.value,
                    "bytes": c.bytes,
                    "seconds": c.seconds,
                    "log_ppl": c.log_ppl,
                }
                for c in self.costs
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DenseModel:
        if not data:
            return cls()
        costs = tuple(DenseCost.from_dict(c) for c in data.get("costs", []))
        group_size = int(data.get("group_size", DEFAULT_GROUP_SIZE))
        return cls(Precision(data["dense"]), costs, str(data.get("device", "cpu")), group_size)
