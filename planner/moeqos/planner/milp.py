"""The exact optimisation: one option per expert, minimising expected seconds or log-perplexity.

Solved by HiGHS (`scipy.optimize.milp`/`linprog`) on the model of moeqos.planner.milp_model, optimal within a
relative `tolerance` of the whole prediction (seconds per token including the fixed part, or
perplexity). The strategy keeps the common case fast without giving up the guarantee:
1. LP relaxation: a lower bound, a solution with few fractional groups (at most about one per tight
   budget or cap row) and reduced costs.
2. A neighbourhood MILP: groups that are fractional in the LP, or have an option whose reduced cost
   is among the lowest `NEIGHBOURHOOD` share, are free; every other group stays at its LP amount.
   Small and fast; accepted when within `tolerance` of the LP bound (a certificate).
3. Otherwise the full MILP, after reduced-cost fixing against step 2's answer: a variable at 0 in the
   LP whose reduced cost exceeds the incumbent's gap to the bound cannot be positive in any better
   solution, so fixing it loses nothing.
"""

from __future__ import annotations

import numpy as np
from moeqos.planner.milp_model import Metric, MilpModel, build_model
from moeqos.planner.problem import Problem

__all__ = ["DEFAULT_TOLERANCE", "Metric", "solve_choice"]

DEFAULT_TOLERANCE = 5e-3
"""Relative optimality tolerance on the predicted objective (seconds per token, or perplexity): well
below the cost models' own errors (several percent), and loose enough that the integrality gap of a
256-expert model (about one expert's worth, ~1/N) does not force a long branch-and-bound."""
NEIGHBOURHOOD = 0.05
"""Share of the LP's zero variables (lowest reduced costs) the step-2 MILP may switch to."""


def solve_choice(
    problem: Problem,
    minimise: Metric,
    seconds_cap: float | None = None,
    log_ppl_cap: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    fixed_seconds: float = 0.0,
    time_limit_s: float = 1.0,
) -> tuple[np.ndarray, float] | None:
    """([N] option index per expert of an optimal plan, its certified relative optimality gap), or None
    when the constraints admit no plan. The gap exceeds `tolerance` only when the full MILP stopped at
    `time_limit_s`: one expert's worth of cost can exceed the tolerance (a CPU-computed expert costs
    ~20x a GPU one), and closing such an integrality gap may take longer than planning is worth.

    `seconds_cap` bounds the experts' seconds per token (the fixed part excluded), `log_ppl_cap` the
    log-ppl increase over the reference.
    """
    model, groups = build_model(problem, minimise, seconds_cap, log_ppl_cap, fixed_seconds, tolerance)
    relaxed = model.relax()
    if relaxed is None:
        return None
    solution, reduced = relaxed
    bound = float(model.objective @ solution)
    found = _neighbourhood(model, solution, reduced, tolerance, time_limit_s)
    incumbent, gap = (found[0], _gap(model, found[0], bound)) if found else (None, np.inf)
    if gap > tolerance:
        lower, upper = _fix_by_reduced_cost(model, solution, reduced, incumbent, bound)
        exact = model.solve(lower, upper, tolerance, time_limit_s)
        if exact is not None and (
            incumbent is None or model.objective @ exact[0] <= model.objective @ incumbent
        ):
            incumbent, gap = exact[0], min(exact[1], _gap(model, exact[0], bound))
    if incumbent is None:
        return None
    choice = _disaggregate(np.rint(incumbent[:-1]).astype(int), model.g_idx, model.k_idx, groups)
    return choice, max(0.0, gap)


def _neighbourhood(
    model: MilpModel, solution: np.ndarray, reduced: np.ndarray, tolerance: float, time_limit_s: float
) -> tuple[np.ndarray, float] | None:
    """Step 2: the MILP over the LP's fractional groups and cheapest alternatives (the rest fixed)."""
    amounts, costs = solution[:-1], reduced[:-1]  # [V]
    at_zero = amounts <= 1e-9
    threshold = np.quantile(costs[at_zero], NEIGHBOURHOOD) if at_zero.any() else 0.0
    candidates = ~np.isclose(amounts, np.rint(amounts), atol=1e-9) | (costs <= threshold)  # [V]
    free = np.isin(model.g_idx, model.g_idx[candidates]) & (candidates | ~at_zero)  # [V]
    lower = np.append(np.where(free, 0.0, np.rint(amounts)), 1.0)
    upper = np.append(np.where(free, model.upper[:-1], np.rint(amounts)), 1.0)
    return model.solve(lower, upper, tolerance / 2, time_limit_s)


def _fix_by_reduced_cost(
    model: MilpModel,
    solution: np.ndarray,
    reduced: np.ndarray,
    incumbent: np.ndarray | None,
    bound: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 3's bounds: variables that cannot improve on the incumbent fixed at their LP bound."""
    lower, upper = model.lower.copy(), model.upper.copy()
    if incumbent is None:
        return lower, upper
    slack = float(model.objective @ incumbent) - bound
    at_lower = (solution <= lower + 1e-9) & (reduced > slack + 1e-12)
    at_upper = (solution >= upper - 1e-9) & (-reduced > slack + 1e-12)
    upper[at_lower] = lower[at_lower]
    lower[at_upper] = upper[at_upper]
    return lower, upper


def _gap(model: MilpModel, candidate: np.ndarray, bound: float) -> float:
    value = float(model.objective @ candidate)
    return (value - bound) / max(abs(value), 1e-300)


def _disaggregate(
    amounts: np.ndarray, g_idx: np.ndarray, k_idx: np.ndarray, groups: np.ndarray
) -> np.ndarray:
    """[N] option per expert: each group's members take its chosen options in order.

    `g_idx` is ascending (variables come from np.nonzero over [G, K]) and each group's amounts sum to
    its size, so repeating each variable's option by its amount lists the picks group by group.
    """
    picks = np.repeat(k_idx, amounts)  # [N], grouped by ascending group
    choice = np.empty(groups.size, dtype=int)
    choice[np.argsort(groups, kind="stable")] = picks
    return choice
