"""`solve`: the best plan for a QoS target within tier budgets (a pure function; no I/O).

Maximise predicted tokens/s under a perplexity ceiling, or minimise predicted perplexity under a
tokens/s floor (a floor on tokens/s is a ceiling on seconds per token, so both are linear). Solved
exactly as a MILP (moeqos.planner.milp) over the linear cost models.

Disk experts make the latency model non-linear: their hit rate depends on which other experts share
the pool. The MILP is kept linear by fixing the hit rates per solve: the first solve assumes every disk
call misses (an upper bound on time, so its plan is truly feasible whenever the solve is), then each
next solve uses the hit rates of the previous plan; every plan is re-evaluated with its own hit rates
and the best truly feasible one is kept (at most `DISK_ITERATIONS` solves). Tier budgets count
resident experts only: the pool's slots are memory the executor reserves apart from them.

A lossy dense element's perplexity adds to the experts' after their compounding
(moeqos.planner.quality_model), which is not linear in the MILP's sum of terms. Its term is the share
that adds its measured increase at a given damage of the experts (a gain under a perplexity cap no
more than it frees at the cap; `QualityModel.dense_term`): the first solve sets it for lossless
experts, and while a plan with a lossy dense element reaches another damage, the next solve sets it
there (the same loop and limit as the hit rates). Each plan is evaluated by the model itself, so caps
hold whatever the terms were set for. When that evaluation puts the plan
over a cap its linear terms met and nothing feasible was found yet, the broken cap is shrunk by the
overshoot and the MILP solved again (at most `TIGHTEN_ITERATIONS` times) rather than answering
InfeasibleTarget for a target some plan meets.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from moeqos.core.errors import InfeasibleTarget, InvalidArgument
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.tier import DISK, TierBudget
from moeqos.core.units import format_bytes
from moeqos.planner.latency_model import LatencyModel
from moeqos.planner.milp import DEFAULT_TOLERANCE, Metric, solve_choice
from moeqos.planner.problem import Problem, build_problem
from moeqos.planner.quality_model import QualityModel

DISK_ITERATIONS = 4
TIGHTEN_ITERATIONS = 3
"""Re-solves with tightened linear caps when the model's evaluation of a plan breaks a cap its linear
terms met (`_tightened_caps`), before the search gives up."""


@dataclass(frozen=True)
class PlanRequest:
    """What to plan for: a profile, a QoS target, budgets, pins and the allowed choices."""

    profile: Profile
    target: QosTarget
    budgets: tuple[TierBudget, ...] = ()
    """Tier budgets (bytes of experts per tier); empty means the profile's own `tiers`."""
    pins: tuple[PlacementRule, ...] = ()
    """Ordered `pattern=precision[@tier]` rules, first match wins; a rule without a tier fixes only the
    precision."""
    allowed_precisions: frozenset[Precision] | None = None
    """None: every precision the profile measured."""
    allowed_tiers: frozenset[str] | None = None
    """None: every budgeted tier the latency model can predict."""
    tolerance: float = DEFAULT_TOLERANCE
    """Relative optimality tolerance of the MILP on the predicted objective (tokens/s or perplexity)."""
    time_limit_s: float = 1.0
    """Seconds the full MILP may run when the fast path cannot certify `tolerance`; the answer's notes
    then give the gap it certified (see moeqos.planner.milp)."""
    concurrency: int = 1
    """Streams decoded together: tokens/s (the target's floor and the predictions) are per stream at
    this many streams (moeqos.planner.batch_model); > 1 needs a profile with batched step timings."""

    @property
    def effective_budgets(self) -> tuple[TierBudget, ...]:
        budgets = self.budgets or self.profile.tiers
        if not budgets:
            raise InvalidArgument("no tier budgets: the profile lists none and the request gives none")
        if self.allowed_tiers is not None:
            budgets = tuple(b for b in budgets if b.name in self.allowed_tiers)
        return budgets

    @property
    def precisions(self) -> list[Precision]:
        measured = self.profile.precisions
        if self.allowed_precisions is None:
            return measured
        return [p for p in measured if p in self.allowed_precisions]


@dataclass(frozen=True)
class PlanResult:
    """A chosen plan with its predictions."""

    plan: Plan
    predicted_tokens_per_s: float
    predicted_perplexity: float
    bytes_per_tier: dict[str, int]
    solve_seconds: float
    perplexity_is_estimate: bool
    notes: str = ""
    budgets: tuple[TierBudget, ...] = field(default=(), compare=False)
    concurrency: int = 1
    """Streams decoded together; `predicted_tokens_per_s` is each stream's."""

    @property
    def predicted_aggregate_tokens_per_s(self) -> float:
        """Tokens/s of all `concurrency` streams together."""
        return self.concurrency * self.predicted_tokens_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_spec": self.plan.to_spec(),
            "plan": self.plan.to_dict(),
            "predicted_tokens_per_s": self.predicted_tokens_per_s,
            "concurrency": self.concurrency,
            "predicted_aggregate_tokens_per_s": self.predicted_aggregate_tokens_per_s,
            "predicted_perplexity": self.predicted_perplexity,
            "bytes_per_tier": dict(self.bytes_per_tier),
            "budgets": {b.name: b.budget_bytes for b in self.budgets},
            "solve_seconds": self.solve_seconds,
            "perplexity_is_estimate": self.perplexity_is_estimate,
            "notes": self.notes,
        }

    def summary(self) -> dict[str, Any]:
        """The JSON-able description InfeasibleTarget.closest carries."""
        keys = (
            "predicted_tokens_per_s",
            "predicted_perplexity",
            "plan_spec",
            "bytes_per_tier",
            "perplexity_is_estimate",
        )
        return {k: v for k, v in self.to_dict().items() if k in keys}


@dataclass(frozen=True)
class _Models:
    latency: LatencyModel
    quality: QualityModel


def solve(
    request: PlanRequest, latency: LatencyModel | None = None, quality: QualityModel | None = None
) -> PlanResult:
    """The optimal plan for `request.target`; raises InfeasibleTarget (with the closest feasible point)."""
    started = time.perf_counter()
    fitted = (latency or LatencyModel.fit(request.profile)).at_concurrency(request.concurrency)
    models = _Models(fitted, quality or QualityModel.fit(request.profile))
    target = request.target
    seconds_cap = 1.0 / target.min_tokens_per_s if target.min_tokens_per_s else None
    ppl_cap = target.perplexity_ceiling(models.quality.reference_perplexity)
    metric: Metric = "seconds" if target.effective_objective == Objective.SPEED else "log_ppl"
    result = _search(request, models, metric, seconds_cap, ppl_cap, started)
    if result is None:
        raise _infeasible(request, models, seconds_cap, ppl_cap)
    return result


def _search(
    request: PlanRequest,
    models: _Models,
    metric: Metric,
    seconds_cap: float | None,
    ppl_cap: float | None,
    started: float,
) -> PlanResult | None:
    """Best truly feasible plan over the hit-rate and damage iterations (see module docstring), or None."""
    latency, quality = models.latency, models.quality
    hits = np.zeros((len(latency.frequency), len(latency.frequency[0])))  # [L, E]
    damage = 0.0  # the experts' summed terms the dense items' terms are set for
    expert_cap = None if seconds_cap is None else seconds_cap - latency.step_fixed_seconds
    allowed_increase = None if ppl_cap is None else math.log(ppl_cap / quality.reference_perplexity)
    log_cap = None if allowed_increase is None else quality.term_cap(allowed_increase)
    best: tuple[PlanResult, float] | None = None
    solves = tightenings = 0
    while solves < DISK_ITERATIONS + tightenings:
        solves += 1
        problem = _problem(request, models, hits, damage, allowed_increase)
        solved = solve_choice(
            problem,
            metric,
            expert_cap,
            log_cap,
            request.tolerance,
            latency.step_fixed_seconds,
            request.time_limit_s,
        )
        if solved is None:
            break
        plan = problem.to_plan(solved[0])
        candidate = evaluate(plan, latency, quality, request.effective_budgets)
        if _meets(candidate, seconds_cap, ppl_cap) and _better(candidate, best, metric):
            best = candidate, solved[1]
        if best is None and tightenings < TIGHTEN_ITERATIONS:
            tightened = _tightened_caps(candidate, quality, expert_cap, log_cap, seconds_cap, ppl_cap)
            if tightened is not None:
                (expert_cap, log_cap), tightenings = tightened, tightenings + 1
                continue
        new_hits = latency.hit_rates(plan)
        experts = problem.num_layers * problem.num_experts
        new_damage = float(problem.log_ppl[np.arange(experts), solved[0][:experts]].sum())  # [N] terms
        hits_settled = not any(a.tier == DISK for a in problem.options) or np.allclose(new_hits, hits)
        # settled when the plan's dense terms set at the damage it reached move by less than the
        # tolerance (what-if priors price int8 and int4 dense elements at ~1e-4: one solve)
        moved = sum(
            abs(
                quality.dense_term(e, p, new_damage, allowed_increase)
                - quality.dense_term(e, p, damage, allowed_increase)
            )
            for e, p in plan.dense
        )
        damage_settled = moved <= request.tolerance * (1.0 + max(new_damage, 0.0))
        if hits_settled and damage_settled:
            break
        hits, damage = new_hits, new_damage
    if best is None:
        return None
    result, gap = best
    notes = f"optimal within {gap:.2%} (certified); " + _notes(request, models, solves)
    notes += _offload_note(result.plan, metric)
    return replace(result, solve_seconds=time.perf_counter() - started, notes=notes)


def _tightened_caps(
    candidate: PlanResult,
    quality: QualityModel,
    expert_cap: float | None,
    log_cap: float | None,
    seconds_cap: float | None,
    ppl_cap: float | None,
) -> tuple[float | None, float | None] | None:
    """The linear caps to solve again with when the model's own evaluation puts the plan they allowed
    over a target's cap (a linearisation that under-prices the plan: the perplexity terms bound the
    prediction from above on measured profiles, but nothing guarantees it for every fit), each broken
    cap shrunk by the plan's overshoot: seconds by their excess, the expert terms in the ratio of the
    allowed to the plan's predicted increase as terms. None when no cap was broken or none can shrink
    (the plan already allowed no loss): the search then ends with what it has."""
    seconds = 1.0 / candidate.predicted_tokens_per_s
    new_expert, new_log, shrunk = expert_cap, log_cap, False
    if seconds_cap is not None and expert_cap is not None and seconds > seconds_cap:
        new_expert, shrunk = expert_cap - (seconds - seconds_cap), True
    if ppl_cap is not None and log_cap is not None and candidate.predicted_perplexity > ppl_cap:
        allowed = quality.term_cap(math.log(ppl_cap / quality.reference_perplexity))
        predicted = quality.term_cap(math.log(candidate.predicted_perplexity / quality.reference_perplexity))
        if allowed > 0 and predicted > allowed:
            new_log, shrunk = log_cap * allowed / predicted, True
    return (new_expert, new_log) if shrunk else None


def _offload_note(plan: Plan, metric: Metric) -> str:
    """Why experts went to disk when the target asked for quality: a user giving a memory budget
    expects quantization, not offloading, so the plan says which it chose and how to forbid it."""
    on_disk = sum(n for a, n in plan.counts().items() if a.tier == DISK)
    if not on_disk or metric != "log_ppl":
        return ""
    return (
        f"; offload: {on_disk} experts on the disk tier, which kept them at higher precision than the "
        "other tiers' budgets allow (slower, not less accurate); to fit by precision only, exclude the "
        "disk tier (allowed tiers without disk; CLI: --no-offload)"
    )


def _problem(
    request: PlanRequest, models: _Models, hits: np.ndarray, damage: float, cap: float | None
) -> Problem:
    return build_problem(
        models.latency,
        models.quality,
        request.effective_budgets,
        request.precisions,
        request.pins,
        hits,
        request.profile.group_size,
        damage,
        cap,
    )


def evaluate(
    plan: Plan, latency: LatencyModel, quality: QualityModel, budgets: tuple[TierBudget, ...] = ()
) -> PlanResult:
    """Predictions for a given plan (solve_seconds 0); the device tier's bytes include what the plan's
    dense part holds beyond the dense precision's (moeqos.core.dense). That delta is negative when the
    dense part shrinks, which frees room for experts, but a tier's use never reads below zero (a tier
    holding no experts is charged nothing, not a credit)."""
    used = plan.bytes_per_tier(latency.expert_bytes)
    for tier, delta in latency.dense.plan_bytes(plan.dense).items():
        used[tier] = max(0, used.get(tier, 0) + delta)
    return PlanResult(
        plan,
        latency.predict_tokens_per_s(plan),
        quality.predict_perplexity(plan),
        used,
        0.0,
        quality.plan_is_estimate(plan),
        "",
        budgets,
        latency.rows,
    )


def _meets(result: PlanResult, seconds_cap: float | None, ppl_cap: float | None) -> bool:
    slack = 1e-6
    fast_enough = seconds_cap is None or 1.0 / result.predicted_tokens_per_s <= seconds_cap * (1 + slack)
    good_enough = ppl_cap is None or result.predicted_perplexity <= ppl_cap * (1 + slack)
    return fast_enough and good_enough


def _better(candidate: PlanResult, best: tuple[PlanResult, float] | None, metric: Metric) -> bool:
    if best is None:
        return True
    current = best[0]
    if metric == "seconds":
        return candidate.predicted_tokens_per_s > current.predicted_tokens_per_s
    return candidate.predicted_perplexity < current.predicted_perplexity


def _notes(request: PlanRequest, models: _Models, iterations: int) -> str:
    parts = [f"perplexity: {models.quality.basis}"]
    if models.latency.rows > 1:
        parts.append(
            f"tokens/s per stream at {models.latency.rows} streams decoded together (batched steps: "
            "each routed expert once per step on its tokens)"
        )
    if any(b.name == DISK for b in request.effective_budgets) and DISK in models.latency.tiers:
        parts.append(
            f"disk: LRU pool of {models.latency.disk_pool_slots} slots (token-cycle reuse model), "
            f"{iterations} solve(s) with hit rates fixed per solve (the optimality certificate is for "
            "those rates)"
        )
    return "; ".join(parts)


def _infeasible(
    request: PlanRequest, models: _Models, seconds_cap: float | None, ppl_cap: float | None
) -> InfeasibleTarget:
    """The error for an unreachable target, carrying the closest feasible point (see `closest_point`)."""
    closest = closest_point(request, models.latency, models.quality, seconds_cap, ppl_cap)
    budgets = ", ".join(f"{b.name}={format_bytes(b.budget_bytes)}" for b in request.effective_budgets)
    wanted = request.target.describe()
    if closest is None:
        return InfeasibleTarget(
            f"no plan fits the budgets ({budgets}) at all with the allowed precisions and pins"
        )
    return InfeasibleTarget(
        f"no plan meets {wanted} within budgets {budgets}; closest: {closest.predicted_tokens_per_s:.3g} tok/s, "
        f"perplexity {closest.predicted_perplexity:.4g} ({closest.plan.describe()})",
        closest.summary(),
    )


def closest_point(
    request: PlanRequest,
    latency: LatencyModel,
    quality: QualityModel,
    seconds_cap: float | None,
    ppl_cap: float | None,
) -> PlanResult | None:
    """The feasible plan nearest an unreachable target: the best plan on the violated bound, keeping the
    other bound when possible (fastest under the ceiling, else most accurate under the floor, else the
    fastest or most accurate outright). None when nothing fits the budgets."""
    models, started = _Models(latency, quality), time.perf_counter()
    attempts: list[tuple[Metric, float | None, float | None]] = []
    if seconds_cap is not None:
        attempts.append(("seconds", None, ppl_cap))
    if ppl_cap is not None:
        attempts.append(("log_ppl", seconds_cap, None))
    attempts.append(("seconds" if seconds_cap is not None else "log_ppl", None, None))
    for metric, s_cap, p_cap in dict.fromkeys(attempts):
        found = _search(request, models, metric, s_cap, p_cap, started)
        if found is not None:
            return found
    return None
