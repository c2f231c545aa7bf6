"""A plan request turned into arrays: per expert and option, expected seconds, log-ppl and bytes.

Legend: N = experts (layer-major, i = layer * E + expert), D = dense elements chosen like experts
(moeqos.core.dense; rows N.. N+D-1, only options of the device tier in their measured precisions),
M = N + D items, K = options (precision, tier).
Both cost models are linear in the one-hot choice of option per item, which is what makes the
optimisation an exact MILP (moeqos.planner.milp). A dense item's seconds, log-ppl and bytes are its
terms relative to the dense precision (moeqos.planner.dense_model): 0 when left as it is, negative
seconds and (untied) bytes when quantized. Its log-ppl is the term that adds its measured increase to
the experts' at their damage, a gain under a perplexity cap no more than it frees at the cap
(`QualityModel.dense_term`: dense damage adds, it does not compound).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from moeqos.core.dense import DenseElement
from moeqos.core.errors import InvalidArgument
from moeqos.core.plan import Assignment, Plan
from moeqos.core.precision import Precision
from moeqos.core.rules import PlacementRule, first_match
from moeqos.core.tier import TierBudget
from moeqos.planner.dense_model import DenseModel
from moeqos.planner.latency_model import LatencyModel
from moeqos.planner.quality_model import QualityModel


@dataclass(frozen=True)
class Problem:
    """Everything the MILP needs, as arrays."""

    options: tuple[Assignment, ...]
    seconds: np.ndarray
    """[M, K] expected seconds per token item i adds under option k."""
    log_ppl: np.ndarray
    """[M, K] log-perplexity increase item i adds under option k."""
    allowed: np.ndarray
    """[M, K] bool: option k may be chosen for item i (pins, allowed sets, dense options)."""
    item_bytes: np.ndarray
    """[M, K] bytes item i charges its option's tier under option k."""
    budgets: tuple[TierBudget, ...]
    num_layers: int
    num_experts: int
    group_size: int
    dense_elements: tuple[DenseElement, ...] = ()
    """The dense items, rows N.. of every array."""
    dense_precision: Precision = Precision.BF16
    """The precision a dense element is in when the plan does not name it."""

    def to_plan(self, choice: np.ndarray) -> Plan:
        """The plan choosing option `choice[i]` ([M] ints) for item i."""
        rows = tuple(
            tuple(
                self.options[int(k)]
                for k in choice[layer * self.num_experts : (layer + 1) * self.num_experts]
            )
            for layer in range(self.num_layers)
        )
        picks = choice[self.num_layers * self.num_experts :]
        dense = tuple(
            (element, self.options[int(k)].precision)
            for element, k in zip(self.dense_elements, picks, strict=True)
            if self.options[int(k)].precision != self.dense_precision
        )
        return Plan(rows, self.group_size, dense)


def build_problem(
    latency: LatencyModel,
    quality: QualityModel,
    budgets: tuple[TierBudget, ...],
    precisions: Iterable[Precision],
    pins: tuple[PlacementRule, ...],
    hits: np.ndarray,
    group_size: int,
    damage: float = 0.0,
    cap: float | None = None,
) -> Problem:
    """Arrays for every (item, option) pair; `hits` is the assumed [L, E] disk pool hit rate, `damage`
    the experts' summed log-ppl terms and `cap` the largest log-perplexity increase allowed (None:
    none) the dense items' terms are set for (`QualityModel.dense_term`)."""
    tiers = [b.name for b in budgets if b.name in latency.tiers]
    options = tuple(Assignment(p, t) for t in tiers for p in precisions)
    expert_options = len(options)
    dense = _dense_choices(latency.dense, tiers, precisions)
    options += tuple(dict.fromkeys(a for row in dense.values() for a in row if a not in options))
    if not expert_options:
        raise InvalidArgument(
            f"no option to choose from: tiers {[b.name for b in budgets]} x precisions "
            f"{[p.value for p in precisions]} (modelled tiers: {latency.tiers})"
        )
    freq = np.asarray(latency.frequency).reshape(-1)  # [N]
    num_layers, num_experts = len(latency.frequency), len(latency.frequency[0])
    miss = 1.0 - np.asarray(hits).reshape(-1)  # [N]
    seconds = np.zeros((freq.size, len(options)))  # dense-only options stay 0 (and not allowed)
    log_ppl = np.zeros_like(seconds)
    for k, a in enumerate(options[:expert_options]):
        seconds[:, k] = latency.option_seconds(a.precision, a.tier, miss.reshape(num_layers, -1)).reshape(-1)
        log_ppl[:, k] = quality.expert_terms(a.precision).reshape(-1)
    allowed = np.zeros((freq.size, len(options)), dtype=bool)  # [N, K]; none of the dense-only options
    allowed[:, :expert_options] = _pinned(options[:expert_options], pins, num_layers, num_experts)
    option_bytes = np.array([latency.expert_bytes.get(a.precision, 0) for a in options], dtype=float)  # [K]
    item_bytes = np.broadcast_to(option_bytes, seconds.shape)  # [N, K]
    rows = [
        _dense_row(latency, quality, element, choices, options, damage, cap)
        for element, choices in dense.items()
    ]
    if rows:
        seconds = np.vstack([seconds, *(r[0] for r in rows)])  # [M, K]
        log_ppl = np.vstack([log_ppl, *(r[1] for r in rows)])
        allowed = np.vstack([allowed, *(r[2] for r in rows)])
        item_bytes = np.vstack([item_bytes, *(r[3] for r in rows)])
    return Problem(
        options,
        seconds,
        log_ppl,
        allowed,
        np.asarray(item_bytes, dtype=float),
        budgets,
        num_layers,
        num_experts,
        group_size,
        tuple(dense),
        latency.dense.dense,
    )


def _dense_choices(
    dense: DenseModel, tiers: list[str], precisions: Iterable[Precision]
) -> dict[DenseElement, list[Assignment]]:
    """Per measured dense element, its options: the device tier in the dense precision and each
    measured precision the request allows. None when the device tier is not offered (its budget is
    where the dense part is charged)."""
    if dense.device not in tiers:
        return {}
    allowed = set(precisions)
    return {
        element: [
            Assignment(p, dense.device) for p in dense.precisions(element) if p == dense.dense or p in allowed
        ]
        for element in dense.elements
    }


def _dense_row(
    latency: LatencyModel,
    quality: QualityModel,
    element: DenseElement,
    choices: list[Assignment],
    options: tuple[Assignment, ...],
    damage: float,
    cap: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[1, K] seconds, log-ppl, allowed and bytes of one dense element (0 outside its choices)."""
    seconds, log_ppl, nbytes = (np.zeros((1, len(options))) for _ in range(3))
    allowed = np.zeros((1, len(options)), dtype=bool)
    for k, option in enumerate(options):
        if option in choices:
            allowed[0, k] = True
            seconds[0, k] = latency.dense_scale * latency.dense.seconds(element, option.precision)
            log_ppl[0, k] = quality.dense_term(element, option.precision, damage, cap)
            nbytes[0, k] = latency.dense.bytes(element, option.precision)
    return seconds, log_ppl, allowed, nbytes


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
