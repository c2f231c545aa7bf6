"""Held-out plans split into parts: how far any model that adds up a plan's parts could rank a set.

When the quality model misses the rank goal on a held-out set, the `quality` section splits each of its
plans' lossy experts into parts, each loud layer's (the layers whose experts the profile measured alone,
`Profile.expert_alone`) and the rest's, and measures every part alone on the eval tokens. A model that
predicted each part's log-perplexity increase exactly and added them up, through any rising link, ranks
the set as the sum of the measured parts ranks it (a rank correlation sees only order); what it cannot
see is the parts' interaction on this text, a plan's measured increase minus its parts' sum. The
quality model is such a model: its layers add up through one link (moeqos.planner.quality_model).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from moeqos.bench.quality_plans import spearman
from moeqos.core.plan import Plan

REST = "the rest"
"""The part holding the lossy experts of every layer that is not loud."""


def plan_parts(plan: Plan, reference: Plan, loud: Iterable[int]) -> dict[str, Plan]:
    """Per part ('layer L' for each loud layer, then REST), `reference` with only that part's experts
    assigned as in `plan`: the experts where `plan` differs from `reference`, split by layer. Parts
    with no such expert are left out."""
    loud_layers = sorted(set(loud))
    changed = plan.changed_experts(reference)
    groups: dict[str, list[tuple[int, int]]] = {}
    for layer, expert in changed:
        name = f"layer {layer}" if layer in loud_layers else REST
        groups.setdefault(name, []).append((layer, expert))
    order = [f"layer {layer}" for layer in loud_layers] + [REST]
    return {name: _with_experts(reference, plan, groups[name]) for name in order if name in groups}


def _with_experts(reference: Plan, plan: Plan, keys: Sequence[tuple[int, int]]) -> Plan:
    """`reference` with the experts `keys` assigned as in `plan`."""
    rows = [list(row) for row in reference.assignments]
    for layer, expert in keys:
        rows[layer][expert] = plan[layer, expert]
    return Plan(tuple(tuple(row) for row in rows), plan.group_size, plan.dense)


@dataclass(frozen=True)
class PartsCheck:
    """One held-out set's plans against the sum of their parts measured alone."""

    model_rank: float
    """The quality model's rank correlation with the measured increases."""
    additive_rank: float
    """The rank correlation of the sum of each plan's parts' measured log increases with its own."""
    interactions: tuple[float, ...]
    """[N] each plan's measured log-perplexity increase minus the sum of its parts'."""

    @property
    def plans(self) -> int:
        """N, the set's plans."""
        return len(self.interactions)


def parts_check(
    whole: Sequence[float], parts: Sequence[Mapping[str, float]], predicted: Sequence[float]
) -> PartsCheck:
    """The check of one set from each plan's measured log increase `whole`, its parts' measured log
    increases `parts` (name -> log increase; a plan with no lossy expert has none) and the model's
    `predicted` increases (any scale: only their order counts)."""
    summed = [sum(p.values()) for p in parts]
    return PartsCheck(
        spearman(list(predicted), list(whole)),
        spearman(summed, list(whole)),
        tuple(w - s for w, s in zip(whole, summed, strict=True)),
    )
