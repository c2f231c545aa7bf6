"""Pure arithmetic the sections share: errors, memory-traffic bounds, picking points on a frontier.

Shapes: L layers, E experts per layer. No torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from moeqos.core.plan import Plan
from moeqos.core.precision import Precision


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error of `predicted` against `measured`, in percent."""
    if len(predicted) != len(measured) or not measured:
        raise ValueError(
            f"need equally many predictions and measurements, got {len(predicted)}, {len(measured)}"
        )
    if any(m == 0 for m in measured):
        raise ValueError("a measured value of 0 has no percentage error")
    return 100.0 * sum(abs(p - m) / abs(m) for p, m in zip(predicted, measured, strict=True)) / len(measured)


def percent_error(predicted: float, measured: float) -> float:
    """Signed error of `predicted` against `measured`, in percent of `measured`."""
    return 100.0 * (predicted - measured) / measured


def short_description(plan: Plan) -> str:
    """The plan's counts (`120xint8@cpu 120xint4@disk`) without its shape prefix: full specs run to
    hundreds of characters."""
    return plan.describe().split(": ", 1)[-1]


def pool_hit_rate(before: Any, after: Any) -> float | None:
    """Hit rate of the disk pool between two StoreStats snapshots (None when no disk expert was called)."""
    calls = (after.hits - before.hits) + (after.misses - before.misses)
    return (after.hits - before.hits) / calls if calls else None


def expert_bytes_per_token(
    frequency: Sequence[Sequence[float]], plan: Plan, expert_bytes: Mapping[Precision, int]
) -> float:
    """Expected bytes of expert weights one decode token reads under `plan`.

    `frequency`: [L, E] expected calls per token (each row sums to top_k), so every call of expert
    (l, e) reads that expert's bytes in its planned precision once.
    """
    plan.check_shape(len(frequency), len(frequency[0]))
    return sum(frequency[layer][expert] * expert_bytes[a.precision] for (layer, expert), a in plan.items())


def bandwidth_bound(bytes_per_token: float, bytes_per_second: float) -> float:
    """The tokens/s a decoder cannot exceed if every token must stream `bytes_per_token` from memory."""
    if bytes_per_token <= 0 or bytes_per_second <= 0:
        raise ValueError("bytes per token and bandwidth must be positive")
    return bytes_per_second / bytes_per_token


def ratio(value: float, reference: float) -> float:
    """value / reference, NaN when the reference is 0 (reported as such, never raised)."""
    return value / reference if reference else math.nan


def spread_indices(
    values: Sequence[float], count: int, exclude: set[int] | frozenset[int] = frozenset()
) -> list[int]:
    """Indices of up to `count` entries of `values` spread evenly between their minimum and maximum.

    Targets are evenly spaced in log(value) (throughputs span orders of magnitude); each target takes
    the nearest entry not yet taken and not in `exclude`. Returned in ascending value order.
    """
    candidates = [i for i, v in enumerate(values) if i not in exclude and v > 0]
    if not candidates or count <= 0:
        return []
    logs = {i: math.log(values[i]) for i in candidates}
    low, high = min(logs.values()), max(logs.values())
    steps = max(count - 1, 1)
    taken: list[int] = []
    for k in range(min(count, len(candidates))):
        target = low + (high - low) * k / steps
        free = [i for i in candidates if i not in taken]
        taken.append(min(free, key=lambda i: abs(logs[i] - target)))
    return sorted(taken, key=lambda i: values[i])


def knee_index(speeds: Sequence[float], perplexities: Sequence[float]) -> int:
    """The frontier point farthest from the chord between its slowest and fastest points.

    Both axes are normalised to [0, 1] (speed in log scale), so the knee is where a little more
    perplexity stops buying much more speed.
    """
    if len(speeds) != len(perplexities) or not speeds:
        raise ValueError("need equally many speeds and perplexities, at least one")
    xs = _normalise([math.log(s) for s in speeds])
    ys = _normalise(list(perplexities))
    first, last = min(range(len(xs)), key=lambda i: xs[i]), max(range(len(xs)), key=lambda i: xs[i])
    dx, dy = xs[last] - xs[first], ys[last] - ys[first]
    norm = math.hypot(dx, dy) or 1.0
    return max(range(len(xs)), key=lambda i: abs(dy * (xs[i] - xs[first]) - dx * (ys[i] - ys[first])) / norm)


def _normalise(values: list[float]) -> list[float]:
    low, high = min(values), max(values)
    return [(v - low) / (high - low) if high > low else 0.0 for v in values]
