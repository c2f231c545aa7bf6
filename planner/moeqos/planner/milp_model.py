"""The MILP behind the solver, as matrices: variables, rows, and the LP/MILP calls to HiGHS.

Variables: y[g, k] = how many items (experts, and dense elements: moeqos.planner.problem) of group g
take option k (integers), plus one constant-term
variable fixed to 1 (the last column). Experts with identical cost rows form one group (exact
aggregation: they are interchangeable), so what-if profiles with few distinct frequencies solve in
milliseconds; measured profiles, where every expert differs, keep one binary per (expert, option).
Options another option of the same tier beats on bytes, seconds and log-ppl at once are dropped
(e.g. int3 next to int4: same bytes, same speed, worse quality).

Rows: sum_k y[g,k] = |g|; per tier sum bytes_k y <= budget; optionally sum seconds y <= cap and
sum log_ppl y <= cap; each row scaled to unit size so the tolerances mean the same for every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from moeqos.planner.problem import Problem
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import csr_array, vstack

Metric = Literal["seconds", "log_ppl"]


@dataclass(frozen=True)
class MilpModel:
    """min objective @ y  s.t.  a_eq @ y = b_eq, a_ub @ y <= b_ub, lower <= y <= upper."""

    objective: np.ndarray  # [V + 1]
    a_eq: csr_array  # [G, V + 1]
    b_eq: np.ndarray  # [G]
    a_ub: csr_array  # [R, V + 1]
    b_ub: np.ndarray  # [R]
    lower: np.ndarray  # [V + 1]
    upper: np.ndarray  # [V + 1]
    g_idx: np.ndarray  # [V] group of each variable
    k_idx: np.ndarray  # [V] option of each variable

    def solve(
        self, lower: np.ndarray, upper: np.ndarray, tolerance: float, time_limit_s: float
    ) -> tuple[np.ndarray, float] | None:
        """An integer solution [V + 1] and the relative gap HiGHS proved for it (within `tolerance`
        unless the time limit struck), or None (infeasible, or no solution in time)."""
        rows = [LinearConstraint(self.a_eq, self.b_eq, self.b_eq)]
        if self.b_ub.size:
            rows.append(LinearConstraint(self.a_ub, -np.inf, self.b_ub))
        result = milp(
            self.objective,
            integrality=np.append(np.ones(self.g_idx.size), 0),
            bounds=Bounds(lower, upper),
            constraints=rows,
            options={"mip_rel_gap": tolerance, "time_limit": time_limit_s},
        )
        if result.x is None:
            return None
        return np.asarray(result.x), float(getattr(result, "mip_gap", np.inf))

    def relax(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The LP relaxation's solution [V + 1] and reduced costs [V + 1], or None if infeasible."""
        result = linprog(
            self.objective,
            A_ub=self.a_ub if self.b_ub.size else None,
            b_ub=self.b_ub if self.b_ub.size else None,
            A_eq=self.a_eq,
            b_eq=self.b_eq,
            bounds=np.stack([self.lower, self.upper], axis=1),
            method="highs",
        )
        if result.status != 0:
            return None
        return np.asarray(result.x), np.asarray(result.lower.marginals + result.upper.marginals)


def build_model(
    problem: Problem,
    minimise: Metric,
    seconds_cap: float | None,
    log_ppl_cap: float | None,
    fixed_seconds: float,
    tolerance: float,
) -> tuple[MilpModel, np.ndarray]:
    """The model and [N] group of each expert."""
    groups, members = _groups(problem)
    counts = np.bincount(groups).astype(float)  # [G]
    g_idx, k_idx = np.nonzero(_undominated(problem, members))  # [V] the variables
    seconds = problem.seconds[members][g_idx, k_idx]  # [V]
    log_ppl = problem.log_ppl[members][g_idx, k_idx]  # [V]
    nbytes = problem.item_bytes[members][g_idx, k_idx]  # [V]
    objective = _objective(problem, minimise, seconds, log_ppl, fixed_seconds, tolerance)
    a_eq = csr_array(
        (np.ones(g_idx.size), (g_idx, np.arange(g_idx.size))), shape=(counts.size, g_idx.size + 1)
    )
    a_ub, b_ub = _inequalities(problem, k_idx, nbytes, seconds, log_ppl, seconds_cap, log_ppl_cap)
    lower = np.append(np.zeros(g_idx.size), 1.0)
    upper = np.append(counts[g_idx], 1.0)
    return MilpModel(objective, a_eq, counts, a_ub, b_ub, lower, upper, g_idx, k_idx), groups


def _objective(
    problem: Problem,
    minimise: Metric,
    seconds: np.ndarray,
    log_ppl: np.ndarray,
    fixed_seconds: float,
    tolerance: float,
) -> np.ndarray:
    """[V + 1] primary metric, a small tie-break on the other one, and the constant term.

    The constant makes HiGHS's relative gap relative to the whole prediction: seconds per token with
    the fixed part, or 1 + log-ppl increase (~ relative perplexity). The tie-break prefers the better
    secondary metric among (near-)equal plans and can move the primary by a tenth of the tolerance.
    """
    primary, secondary = (seconds, log_ppl) if minimise == "seconds" else (log_ppl, seconds)
    other = problem.log_ppl if minimise == "seconds" else problem.seconds  # [N, K]
    offset = fixed_seconds if minimise == "seconds" else 1.0
    scale = _scale(primary)
    floor = offset + (float(problem.seconds.min(axis=1).sum()) if minimise == "seconds" else 0.0)
    reach = float(np.abs(other).max(axis=1).sum())
    weight = 0.1 * tolerance * floor / reach if reach > 0 else 0.0
    return np.append(primary + weight * secondary, offset) / scale


def _groups(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """[M] group of each item and [G] a representative: identical (seconds, log_ppl, bytes, allowed)
    rows."""
    keys = np.concatenate(
        [problem.seconds, problem.log_ppl, problem.item_bytes, problem.allowed.astype(float)], axis=1
    )  # [M, 4K]
    _, members, groups = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return groups.reshape(-1), members


def _undominated(problem: Problem, members: np.ndarray) -> np.ndarray:
    """[G, K] allowed options not beaten by another allowed option of the same tier."""
    allowed = problem.allowed[members].copy()  # [G, K]
    seconds, log_ppl = problem.seconds[members], problem.log_ppl[members]  # [G, K]
    options, nbytes = problem.options, problem.item_bytes[members]  # [G, K]
    for k, a in enumerate(options):
        for j, b in enumerate(options):
            if j == k or a.tier != b.tier:
                continue
            no_worse = (
                (seconds[:, j] <= seconds[:, k])
                & (log_ppl[:, j] <= log_ppl[:, k])
                & (nbytes[:, j] <= nbytes[:, k])
            )
            strictly = (
                (seconds[:, j] < seconds[:, k])
                | (log_ppl[:, j] < log_ppl[:, k])
                | (nbytes[:, j] < nbytes[:, k])
            )
            allowed[:, k] &= ~(allowed[:, j] & no_worse & (strictly | (j < k)))
    return allowed


def _inequalities(
    problem: Problem,
    k_idx: np.ndarray,
    var_bytes: np.ndarray,
    seconds: np.ndarray,
    log_ppl: np.ndarray,
    seconds_cap: float | None,
    log_ppl_cap: float | None,
) -> tuple[csr_array, np.ndarray]:
    """[R, V + 1] budget and cap rows (scaled) and [R] right-hand sides."""
    rows: list[np.ndarray] = []
    bounds: list[float] = []
    tiers = np.array([a.tier for a in problem.options])[k_idx]  # [V]
    for budget in problem.budgets:
        nbytes = np.where(tiers == budget.name, var_bytes, 0.0)  # [V]
        if nbytes.any():
            scale = max(float(budget.budget_bytes), float(np.abs(nbytes).max()))
            rows.append(nbytes / scale)
            bounds.append(budget.budget_bytes / scale)
    for values, cap in ((seconds, seconds_cap), (log_ppl, log_ppl_cap)):
        if cap is not None:
            scale = max(_scale(values), abs(cap), 1e-30)
            rows.append(values / scale)
            bounds.append(cap / scale)
    matrix = [csr_array(np.append(r, 0.0)[None, :]) for r in rows]
    width = k_idx.size + 1
    return (vstack(matrix).tocsr() if matrix else csr_array((0, width))), np.array(bounds)


def _scale(values: np.ndarray) -> float:
    return float(np.abs(values).max()) if values.size and np.abs(values).max() > 0 else 1.0
