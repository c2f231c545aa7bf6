"""A plan request turned into arrays: per expert and option, expected seconds, log-ppl and bytes.

Legend: N = experts (layer-major, i = layer * E + expert), K = options (precision, tier).
Both cost models are linear in the one-hot choice of option per expert, which is what makes the
optimisation an exact MILP (moeqos.planner.milp).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from moeqos.core.errors import InvalidArgument
from moeqos.core.plan import Assignment, Plan
from moeqos.core.precision import Precision
from moeqos.core.rules import PlacementRule, first_match
from moeqos.core.tier import DISK, TierBudget
from moeqos.planner.latency_model import LatencyModel
from moeqos.planner.quality_model import QualityModel


@dataclass(frozen=True)
class Problem:
    """Everything the MILP needs, as arrays."""

    options: tuple[Assignment, ...]
    seconds: np.ndarray
    """[N, K] expected seconds per token expert i adds under option k."""
    log_ppl: np.ndarray
    """[N, K] log-perplexity increase expert i adds under option k."""
    allowed: np.ndarray
    """[N, K] bool: option k may be chosen for expert i (pins, allowed sets)."""
    option_bytes: np.ndarray
    """[K] bytes of one expert under option k."""
    budgets: tuple[TierBudget, ...]
    num_layers: int
    num_experts: int
    group_size: int

    def to_plan(self, choice: np.ndarray) -> Plan:
        """The plan choosing option `choice[i]` ([N] ints) for expert i."""
        rows = tuple(
            tuple(
                self.options[int(k)]
                for k in choice[layer * self.num_experts : (layer + 1) * self.num_experts]
            )
            for layer in range(self.num_layers)
        )
        return Plan(rows, self.group_size)


def build_problem(
    latency: LatencyModel,
    quality: QualityModel,
    budgets: tuple[TierBudget, ...],
    precisions: Iterable[Precision],
    pins: tuple[PlacementRule, ...],
    hits: np.ndarray,
    group_size: int,
) -> Problem:
    """Arrays for every (expert, option) pair; `hits` is the assumed [L, E] disk pool hit rate."""
    tiers = [b.name for b in budgets if b.name in latency.tiers]
    options = tuple(Assignment(p, t) for t in tiers for p in precisions)
    if not options:
        raise InvalidArgument(
            f"no option to choose from: tiers {[b.name for b in budgets]} x precisions "
            f"{[p.value for p in precisions]} (modelled tiers: {latency.tiers})"
        )
    freq = np.asarray(latency.frequency).reshape(-1)  # [N]
    num_layers, num_experts = len(latency.frequency), len(latency.frequency[0])
    miss = 1.0 - np.asarray(hits).reshape(-1)  # [N]
    seconds = np.empty((freq.size, len(options)))
    log_ppl = np.empty_like(seconds)
    for k, a in enumerate(options):
        call = latency.call_seconds(a.precision, a.tier)
        load = latency.load_seconds(a.precision) if a.tier == DISK else 0.0
        seconds[:, k] = freq * (call + miss * load)
        log_ppl[:, k] = quality.expert_terms(a.precision).reshape(-1)
    allowed = _pinned(options, pins, num_layers, num_experts)  # [N, K]
    option_bytes = np.array([latency.expert_bytes[a.precision] for a in options], dtype=float)
    return Problem(
        options, seconds, log_ppl, allowed, option_bytes, budgets, num_layers, num_experts, group_size
    )


def _pinned(
    options: tuple[Assignment, ...], pins: tuple[PlacementRule, ...], layers: int, experts: int
) -> np.ndarray:
    """[N, K] options left to each expert by the first pin rule naming it (a rule without a tier
    fixes the precision only)."""
    allowed = np.ones((layers * experts, len(options)), dtype=bool)
    rules = list(pins)
    for layer in range(layers):
        for expert in range(experts):
            rule = first_match(rules, layer, expert)
            if rule is None:
                continue
            row = [a.precision == rule.precision and rule.tier in (None, a.tier) for a in options]
            if not any(row):
                raise InvalidArgument(
                    f"pin {rule} names no available option for L{layer}.E{expert} "
                    f"(options: {', '.join(map(str, options))})"
                )
            allowed[layer * experts + expert] = row
    return allowed
