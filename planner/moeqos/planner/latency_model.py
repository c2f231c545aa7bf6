"""Expected decode time per token under a plan, fitted to a Profile's measured costs.

    seconds/token = fixed + sum_{l,e} freq[l][e] * cost(l, e)

with `freq[l][e]` the expected calls of expert (l, e) per token and `cost` one call in the expert's
(precision, tier):
- a resident tier (`cpu`, `cuda:0`): `factor[p@t] * curve_t(bytes_p)`, where `curve_t` is
  `overhead + bytes / bandwidth` fitted over every precision measured on tier t (so unmeasured
  precisions and sizes are predicted) and `factor[p@t]` = measured / curve for measured precisions
  (it keeps per-precision compute such as dequantisation that bytes alone do not explain; 1 for
  unmeasured ones). A tier with no measurement at all cannot be predicted and is not offered.
- `disk`: the compute of the pool's tier (the executor's device) plus the expected load,
  `(1 - hit) * load_factor[p] * load(bytes_p)`, with `load` fitted the same way to the LoadCosts and
  `load_factor[p]` = measured / curve (a load may also rebuild a kernel layout, which bytes alone do
  not explain), and `hit` the LRU pool's hit rate for that expert under the plan (moeqos.planner.hit_rate).
Both kinds of factor are medians over the precisions that cost the same (see `same_cost`).
A plan's dense part adds its elements' measured seconds over the dense precision's
(moeqos.planner.dense_model). tokens/s = 1 / seconds per token.

`at_concurrency(B)` gives the same model for decode steps on B streams at once (the batch dimension,
moeqos.planner.batch_model): the seconds it predicts are then seconds per step, each stream getting one
token per step, so its tokens/s are per stream; B = 1 (the default) is the formula above exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import CallCost, Grid, LoadCost, Profile
from moeqos.core.tier import DISK
from moeqos.planner.batch_model import BatchModel
from moeqos.planner.curves import CostCurve, fit_curve
from moeqos.planner.dense_model import DenseModel
from moeqos.planner.hit_rate import lru_hit_rates
from moeqos.planner.identity import FitIdentity


@dataclass(frozen=True)
class LatencyModel:
    """A fitted per-token decode time model (plain data; `to_dict`/`from_dict`)."""

    identity: FitIdentity
    fixed_seconds: float
    frequency: Grid
    """[L, E] expected calls per token."""
    expert_bytes: dict[Precision, int]
    curves: dict[str, CostCurve]
    """Per resident tier, the call cost curve."""
    factors: dict[str, float]
    """Per measured `precision@tier`, measured / curve (median over its points)."""
    load_curve: CostCurve | None = None
    """Disk-to-slot load cost curve (None without LoadCosts: no disk tier)."""
    load_factors: dict[Precision, float] = field(default_factory=dict)
    """Per measured precision, measured load / curve (1 for unmeasured precisions)."""
    pool_tier: str = "cpu"
    """Where disk experts are computed once loaded (the executor's device)."""
    disk_pool_slots: int = 0
    dense: DenseModel = field(default_factory=DenseModel)
    """The dense elements' seconds and bytes per precision (the dense regressors)."""
    batch: BatchModel = field(default_factory=BatchModel)
    """How a step's cost grows with the streams decoded together (empty: one stream only)."""
    rows: int = 1
    """Streams decoded together in each predicted step (see `at_concurrency`)."""

    # ----- fitting ------------------------------------------------------------------------------
    @classmethod
    def fit(cls, profile: Profile) -> LatencyModel:
        """Fit the call and load curves to the profile's measurements."""
        resident = [c for c in profile.call_costs if c.tier != DISK]
        tiers = sorted({c.tier for c in resident})
        curves = {t: fit_curve([(c.bytes, c.seconds) for c in resident if c.tier == t]) for t in tiers}
        factors = {
            f"{c.precision.value}@{c.tier}": _pooled_ratio(
                [o for o in resident if o.tier == c.tier], c, curves[c.tier]
            )
            for c in resident
        }
        load_curve = (
            fit_curve([(c.bytes, c.seconds) for c in profile.load_costs]) if profile.load_costs else None
        )
        device = profile.hardware.device
        return cls(
            identity=FitIdentity.of(profile),
            fixed_seconds=profile.fixed_seconds,
            frequency=profile.frequency,
            expert_bytes=profile.expert_bytes(),
            curves=curves,
            factors=factors,
            load_curve=load_curve,
            load_factors=_load_factors(profile, load_curve),
            pool_tier=device if device in curves else (tiers[0] if tiers else device),
            disk_pool_slots=profile.disk_pool_slots,
            dense=DenseModel.fit(profile),
            batch=BatchModel.fit(profile),
        )

    def at_concurrency(self, rows: int) -> LatencyModel:
        """This model for steps decoding `rows` streams together; InvalidArgument (or OutOfRange) when
        the profile did not measure batched steps and `rows` > 1."""
        self.batch.check(rows)
        return self if rows == self.rows else replace(self, rows=rows)

    @property
    def step_fixed_seconds(self) -> float:
        """Seconds of a step outside the experts at `rows` streams (`fixed_seconds` at one)."""
        return self.fixed_seconds * self.dense_scale

    @property
    def dense_scale(self) -> float:
        """How much more a step's dense part costs at `rows` streams than at one."""
        return self.batch.fixed_ratio(self.rows) if self.rows > 1 else 1.0

    # ----- per call -----------------------------------------------------------------------------
    @property
    def tiers(self) -> list[str]:
        """Tiers this model can predict (resident tiers with measurements, plus disk with load costs)."""
        return list(self.curves) + (
            [DISK] if self.load_curve is not None and self.pool_tier in self.curves else []
        )

    def call_seconds(self, precision: Precision, tier: str) -> float:
        """One call's compute time; for `disk` the compute in the pool's tier (the hit case)."""
        where = self.pool_tier if tier == DISK else tier
        if where not in self.curves:
            raise KeyError(f"no call costs measured on tier {where!r}")
        factor = self.factors.get(f"{precision.value}@{where}", 1.0)
        return factor * self.curves[where].seconds(self.expert_bytes[precision])

    def load_seconds(self, precision: Precision) -> float:
        """Time to bring one expert in `precision` from disk into a pool slot."""
        if self.load_curve is None:
            raise KeyError("no load costs measured: the profile has no disk tier")
        factor = self.load_factors.get(precision, 1.0)
        return factor * self.load_curve.seconds(self.expert_bytes[precision])

    # ----- per plan -----------------------------------------------------------------------------
    def hit_rates(self, plan: Plan) -> np.ndarray:
        """[L, E] pool hit probability of each disk expert of `plan` (0 elsewhere)."""
        freq = np.asarray(self.frequency)  # [L, E]
        on_disk = np.array([[a.tier == DISK for a in row] for row in plan.assignments])  # [L, E]
        hits = np.zeros_like(freq)
        hits[on_disk] = lru_hit_rates(freq[on_disk], self.disk_pool_slots)
        return hits

    def option_seconds(self, precision: Precision, tier: str, miss: np.ndarray) -> np.ndarray:
        """[L, E] expected seconds per step each expert adds in (precision, tier), with `miss` [L, E]
        the disk pool's miss rate assumed for it (used for `disk` only)."""
        touched, tokens = self.batch.calls_per_step(np.asarray(self.frequency), self.rows)  # [L, E] x2
        where = self.pool_tier if tier == DISK else tier
        growth = self.batch.call_growth(precision, where) if self.rows > 1 else 0.0
        scale = self.batch.expert_scale(self.rows) if self.rows > 1 else 1.0
        seconds = scale * self.call_seconds(precision, tier) * (touched + growth * (tokens - touched))
        if tier == DISK:
            seconds = seconds + touched * np.asarray(miss) * self.load_seconds(precision)
        return np.asarray(seconds)

    def expert_seconds(self, plan: Plan) -> np.ndarray:
        """[L, E] expected seconds per step each expert contributes under `plan` (per token at one
        stream)."""
        plan.check_shape(len(self.frequency), len(self.frequency[0]))
        miss = 1.0 - self.hit_rates(plan)  # [L, E]
        options = {a: self.option_seconds(a.precision, a.tier, miss) for a in set(plan.counts())}
        cost = np.empty_like(miss)
        for (layer, expert), a in plan.items():
            cost[layer, expert] = options[a][layer, expert]
        return cost

    def predict_seconds(self, plan: Plan) -> float:
        """Expected seconds per decode step under `plan` (per token at one stream)."""
        dense = self.dense_scale * self.dense.plan_seconds(plan.dense)
        return self.step_fixed_seconds + float(self.expert_seconds(plan).sum()) + dense

    def predict_tokens_per_s(self, plan: Plan) -> float:
        """Tokens/s of each stream (one token per step)."""
        return 1.0 / self.predict_seconds(plan)

    def predict_aggregate_tokens_per_s(self, plan: Plan) -> float:
        """Tokens/s of all `rows` streams together."""
        return self.rows * self.predict_tokens_per_s(plan)

    # ----- reporting and JSON -------------------------------------------------------------------
    @property
    def residuals(self) -> dict[str, tuple[float, ...]]:
        """Per curve (`tier`, and `load` for disk), measured minus fitted seconds of each point."""
        out = {t: c.residuals_s for t, c in self.curves.items()}
        if self.load_curve is not None:
            out["load"] = self.load_curve.residuals_s
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity.to_dict(),
            "fixed_seconds": self.fixed_seconds,
            "frequency": [list(r) for r in self.frequency],
            "expert_bytes": {p.value: b for p, b in self.expert_bytes.items()},
            "curves": {t: c.to_dict() for t, c in self.curves.items()},
            "factors": dict(self.factors),
            "load_curve": self.load_curve.to_dict() if self.load_curve else None,
            "load_factors": {p.value: f for p, f in self.load_factors.items()},
            "pool_tier": self.pool_tier,
            "disk_pool_slots": self.disk_pool_slots,
            "dense": self.dense.to_dict(),
            "batch": self.batch.to_dict(),
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyModel:
        load = data.get("load_curve")
        return cls(
            identity=FitIdentity.from_dict(data["identity"]),
            fixed_seconds=float(data["fixed_seconds"]),
            frequency=tuple(tuple(float(x) for x in r) for r in data["frequency"]),
            expert_bytes={Precision(p): int(b) for p, b in data["expert_bytes"].items()},
            curves={t: CostCurve.from_dict(c) for t, c in data["curves"].items()},
            factors={k: float(v) for k, v in data["factors"].items()},
            load_curve=CostCurve.from_dict(load) if load else None,
            load_factors={Precision(p): float(f) for p, f in data.get("load_factors", {}).items()},
            pool_tier=str(data["pool_tier"]),
            disk_pool_slots=int(data["disk_pool_slots"]),
            dense=DenseModel.from_dict(data.get("dense")),
            batch=BatchModel.from_dict(data.get("batch")),
            rows=int(data.get("rows", 1)),
        )


def same_cost(a: Precision, b: Precision) -> bool:
    """True if experts in `a` and `b` share one kernel, so their factors over the bytes curve differ
    only by noise and are pooled: the group sizes of one grouped bit-width (`int4`, `int4g32`, ...).
    Bit-widths are kept apart: int3/int2 are bit-packed, with their own bytes and unpacking kernel."""
    return a == b or (a.is_grouped and b.is_grouped and a.bits == b.bits)


def _load_factors(profile: Profile, curve: CostCurve | None) -> dict[Precision, float]:
    """Per precision with LoadCosts, its pooled measured / curve ratio."""
    if curve is None:
        return {}
    return {c.precision: _pooled_ratio(profile.load_costs, c, curve) for c in profile.load_costs}


def _pooled_ratio(costs: Sequence[CallCost | LoadCost], cost: CallCost | LoadCost, curve: CostCurve) -> float:
    """Median of measured / curve over the `costs` whose precision costs the same as `cost`'s."""
    return float(
        np.median(
            [c.seconds / curve.seconds(c.bytes) for c in costs if same_cost(c.precision, cost.precision)]
        )
    )
