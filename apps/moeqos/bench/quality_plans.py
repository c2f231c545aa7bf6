"""The plans the `quality` section compares at equal memory, and the statistics it reports (pure).

At a share s of int4 (the rest bf16) every contender puts exactly round(s * L * E) experts in int4, so
all use the same bytes: the planner's choice (a quality objective under a device budget of exactly
those bytes, bf16 and int4 only, no disk), a uniformly random pick (the paper's baseline), and the
least-called experts (routing frequency alone).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from moeqos.core.plan import Assignment, Plan
from moeqos.core.precision import Precision

SHARES = (0.25, 0.5, 0.75)
RANDOM_SEEDS = 5
SECOND_SHARES = (0.375, 0.625)
"""The second held-out set's shares (seeds SECOND_SEEDS): added after the quality model's form (the
anchor's compounding) and the signal's tokens were chosen by looking at the first set's plans, so that
one held-out set was never looked at when choosing."""
SECOND_SEEDS = range(5, 10)
THIRD_SHARES = (0.3, 0.6)
"""The third held-out set's shares (seeds THIRD_SEEDS): added after the error overlap and the fit's
floor (moeqos.planner.quality_model.MIN_INCREASE) were chosen by looking at the first two sets."""
THIRD_SEEDS = range(10, 15)
FOURTH_SHARES = (0.2, 0.45)
"""The fourth held-out set's shares (seeds FOURTH_SEEDS): added after the loud layers' experts measured
alone (moeqos.core.sensitivity.loud_layers) were chosen by replaying the first three sets."""
FOURTH_SEEDS = range(15, 20)
FIFTH_SHARES = (0.35, 0.55)
"""The fifth held-out set's shares (seeds FIFTH_SEEDS): added after the layers and the loud layers'
experts measured alone on the quality text (then blended by a share fixed by the token count) were
chosen by replaying the first four sets."""
FIFTH_SEEDS = range(20, 25)
SIXTH_SHARES = (0.4, 0.7)
"""The sixth held-out set's shares (seeds SIXTH_SEEDS): added after each layer's increase alone was
weighed by its own noise and the loud layers' experts taken as measured (moeqos.core.sensitivity),
chosen by replaying the first five sets and by measuring subsets of two layers' experts."""
SIXTH_SEEDS = range(25, 30)
SEVENTH_SHARES = (0.15, 0.65)
"""The seventh held-out set's shares (seeds SEVENTH_SEEDS): added after the whole layers measured alone
joined the designed plans in the quality model's fit (moeqos.planner.quality_model), chosen on the
product profile's fit and by replaying the first six sets."""
SEVENTH_SEEDS = range(30, 35)
EIGHTH_SHARES = (0.32, 0.58)
"""The eighth held-out set's shares (seeds EIGHTH_SEEDS): added with no change to the quality model after
the seventh, to measure the model that met six of seven sets once more on plans nobody had looked at."""
EIGHTH_SEEDS = range(35, 40)
LATER_SETS = (
    ("second", SECOND_SHARES, SECOND_SEEDS),
    ("third", THIRD_SHARES, THIRD_SEEDS),
    ("fourth", FOURTH_SHARES, FOURTH_SEEDS),
    ("fifth", FIFTH_SHARES, FIFTH_SEEDS),
    ("sixth", SIXTH_SHARES, SIXTH_SEEDS),
    ("seventh", SEVENTH_SHARES, SEVENTH_SEEDS),
    ("eighth", EIGHTH_SHARES, EIGHTH_SEEDS),
)
"""(name, shares, random seeds) of the held-out sets added after the first, in the order they were added."""


def int4_count(layers: int, experts: int, share: float) -> int:
    """Experts in int4 at `share`."""
    return round(layers * experts * share)


def with_int4(layers: int, experts: int, cells: Iterable[tuple[int, int]], tier: str) -> Plan:
    """bf16 everywhere but `cells`, which are int4; all on `tier`."""
    chosen = set(cells)
    lossy, full = Assignment(Precision.INT4, tier), Assignment(Precision.BF16, tier)
    return Plan(
        tuple(
            tuple(lossy if (layer, e) in chosen else full for e in range(experts)) for layer in range(layers)
        )
    )


def random_pick(layers: int, experts: int, count: int, seed: int, tier: str) -> Plan:
    """`count` experts drawn uniformly without replacement put in int4."""
    cells = [(layer, e) for layer in range(layers) for e in range(experts)]
    return with_int4(layers, experts, random.Random(seed).sample(cells, count), tier)


def frequency_pick(frequency: Sequence[Sequence[float]], count: int, tier: str) -> Plan:
    """The `count` least-called experts put in int4 (ties by position)."""
    cells = sorted((f, layer, e) for layer, row in enumerate(frequency) for e, f in enumerate(row))
    layers, experts = len(frequency), len(frequency[0])
    return with_int4(layers, experts, [(layer, e) for _, layer, e in cells[:count]], tier)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan with fewer than 2 points or no spread."""
    if len(xs) < 2:
        return float("nan")
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx > 0 and vy > 0 else float("nan")


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def mape_of_increase(predicted: Sequence[float], measured: Sequence[float], reference: float) -> float:
    """Mean |predicted increase - measured increase| / measured increase (perplexities vs `reference`)."""
    errors = [
        abs((p - reference) - (m - reference)) / (m - reference)
        for p, m in zip(predicted, measured, strict=True)
        if m > reference
    ]
    return sum(errors) / len(errors) if errors else float("nan")
