"""The per-expert quality signal: how much one expert in one precision hurts the model's output.

A profile measures, per precision p and layer l, `layer_kl[p][l]`: the mean per-token KL divergence of
the model's next-token distribution from the reference when *every* expert of layer l is in p (see
moeqos.executor.sensitivity). That is measured where the damage happens (the output), so it ranks layers
by what they cost. Within a layer it is shared out by each expert's squared relative error (KL grows
with the square of a small output perturbation) times the square root of its call frequency:

    signal_p[l][e] = layer_kl[p][l] * w[l][e] / sum_e' w[l][e'],   w = freq^FREQUENCY_EXPONENT * err_p^2

Why not freq^1 (each call adding the same damage): on the default model the least-called experts are
not the harmless ones. Quantizing the least-called quarter costs +3.1% perplexity on ptb:test, more
than the median random quarter, and over the bench's 18 held-out int4/bf16 plans the square root ranks
the measured damage better (Spearman 0.94 against 0.88 with freq^1, 0.93 with no frequency at all;
exponent chosen on those plans, so that correlation is optimistic).

In the few layers whose KL stands far above the others' (`loud_layers`: the last layer and an
attention-sink layer on the default model, at 12x and 11x the median), the profile also measures each
expert *alone* in the anchor precision: the calibration text's log-perplexity increase with only that
expert quantized (`Profile.expert_alone`). There the layer's KL is shared by those measurements instead:

    w[l][e] = max(alone[l][e] - m, ALONE_FLOOR) * (err_p / err_anchor)^2,    m = median of all measured

(m takes off what any single change moves the text's perplexity by, -0.3% on 1,024 ptb:train tokens:
even one expert computed in fp32 moves it by -0.1%). Why: on the default model the loud layers' experts
are not alike. Alone on 2,048 ptb:test tokens, int4 on expert 2 of layer 11 (the one every window's
first token, the attention sink, is routed to) costs +1.5% and expert 1 of layer 29 +1.5%, while most
experts of those layers cost under +0.3%; the frequency-and-error share gave expert (11, 2) 3% of its
layer, and held-out random picks that held it or layer 29's costly experts measured about twice their
prediction. Replayed on the bench's three held-out sets (`/tmp/qb52`, the singles measured on 1,024
ptb:train tokens), sharing the two loud layers this way moved the MAPE of the increase / Spearman from
0.215 / 0.960, 0.281 / 0.917, 0.394 / 0.754 to 0.168 / 0.977, 0.227 / 0.934, 0.337 / 0.908, and a
fourth set measured after this choice scored 0.235 / 0.886 (0.353 / 0.859 without it); sharing every
layer this way was worse (the quiet layers' experts alone are within the text's noise, +-0.2%).

A precision whose `layer_kl` was not measured borrows a measured one's ("the anchor", the measured
precision nearest in bits), scaled per layer by the squared ratio of the two precisions'
mean errors in that layer (the same quadratic law). With no `layer_kl` at all the signal is the older
proxy `freq * err_p` (err = 1 where not measured either). Shapes: L = layers, E = experts per layer. Pure Python, no numpy: core imports nothing
heavy.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from moeqos.core.precision import Precision

Row = Sequence[float]

FREQUENCY_EXPONENT = 0.5
"""How a layer's measured KL is shared among its experts by call frequency (see module docstring)."""
LOUD_RATIO = 8.0
"""A layer is loud when its KL is at least this many times the median layer's (`loud_layers`). On the
default model: layers 29 and 11 (12x, 11x); the next are layers 2 and 0 (4.5x, 4x), whose experts alone
sit within the text's noise and whose passes start at the bottom of the model (a pass each, not 1/30
and 19/30 of one)."""
MOST_LOUD = 4
"""At most this many loud layers get their experts measured alone (the loudest): each costs E passes."""
ALONE_FLOOR = 0.001
"""Least weight (nats) of an expert measured alone: one that measured no dearer than the median still
shares a little of its layer's KL (a single change's increase is noisy at +-0.002 on 1,024 tokens)."""


def expert_signal(
    frequency: Sequence[Row],
    error: Sequence[Row] | None,
    layer_kl: Sequence[float] | None,
    alone_weights: Mapping[int, Row] | None = None,
) -> tuple[tuple[float, ...], ...]:
    """[L, E] per-expert signal of one precision (see module docstring); `alone_weights` holds the
    weights of the layers whose experts were measured alone (`alone_weights_of`)."""
    rows = []
    for layer, freq in enumerate(frequency):
        err = error[layer] if error is not None else [1.0] * len(freq)
        if layer_kl is None:
            rows.append(tuple(f * e for f, e in zip(freq, err, strict=True)))
            continue
        weights = [f**FREQUENCY_EXPONENT * e * e for f, e in zip(freq, err, strict=True)]  # [E]
        if alone_weights and layer in alone_weights:
            weights = list(alone_weights[layer])
        total = sum(weights)
        if total <= 0:  # no error measured in this layer: share by calls
            weights, total = list(freq), sum(freq)
        share = [w / total if total > 0 else 1.0 / len(freq) for w in weights]
        rows.append(tuple(layer_kl[layer] * s for s in share))
    return tuple(rows)


def signal_grids(
    frequency: Sequence[Row],
    quant_error: Mapping[Precision, Sequence[Row]],
    layer_kl: Mapping[Precision, Sequence[float]],
    precisions: Sequence[Precision],
    expert_alone: Mapping[int, Row] | None = None,
) -> dict[Precision, tuple[tuple[float, ...], ...]]:
    """Per precision in `precisions`, the [L, E] signal (measured, anchor-scaled or proxy; see above).
    `expert_alone` is the profile's measurement of the loud layers' experts alone, in the first
    `layer_kl` precision (empty or None: every layer shared by frequency and error)."""
    anchors = [a for a in layer_kl if a in quant_error]
    first = next(iter(layer_kl), None)
    out = {}
    for p in precisions:
        error = quant_error.get(p)
        kl = layer_kl.get(p)
        if kl is None and anchors and error is not None:
            anchor = min(anchors, key=lambda a: abs(a.bits - p.bits))
            kl = _scaled(layer_kl[anchor], quant_error[anchor], error)
        alone = None
        if expert_alone and first is not None:
            alone = alone_weights_of(expert_alone, quant_error.get(first), error)
        out[p] = expert_signal(frequency, error, kl, alone)
    return out


def loud_layers(layer_kl: Sequence[float]) -> list[int]:
    """The layers whose KL is at least LOUD_RATIO times the median layer's, loudest first, at most
    MOST_LOUD of them (none when the median is 0)."""
    median = statistics.median(layer_kl) if layer_kl else 0.0
    if median <= 0:
        return []
    loud = [layer for layer, kl in enumerate(layer_kl) if kl >= LOUD_RATIO * median]
    return sorted(loud, key=lambda layer: -layer_kl[layer])[:MOST_LOUD]


def alone_weights_of(
    expert_alone: Mapping[int, Row], anchor_error: Sequence[Row] | None, error: Sequence[Row] | None
) -> dict[int, tuple[float, ...]]:
    """Per measured layer, [E] weights max(alone - median of every measured expert, ALONE_FLOOR), times
    (err / anchor err)^2 per expert where both errors are known (a precision borrowing the anchor's
    measurement, by the same quadratic law as `_scaled`)."""
    median = statistics.median(v for row in expert_alone.values() for v in row)
    out = {}
    for layer, row in expert_alone.items():
        weights = [max(v - median, ALONE_FLOOR) for v in row]
        if anchor_error is not None and error is not None:
            weights = [
                w * (e / a) ** 2 if a > 0 else w
                for w, e, a in zip(weights, error[layer], anchor_error[layer], strict=True)
            ]
        out[layer] = tuple(weights)
    return out


def _scaled(kl: Sequence[float], anchor_error: Sequence[Row], error: Sequence[Row]) -> list[float]:
    """[L] `kl` times (mean error / mean anchor error)^2 per layer (0 where the anchor has no error)."""
    out = []
    for value, a_row, row in zip(kl, anchor_error, error, strict=True):
        a_mean, mean = sum(a_row) / len(a_row), sum(row) / len(row)
        out.append(value * (mean / a_mean) ** 2 if a_mean > 0 else 0.0)
    return out


def safest_first(signal: Sequence[Row]) -> list[tuple[int, int]]:
    """(layer, expert) from the smallest signal to the largest (ties by position)."""
    cells = [(value, layer, expert) for layer, row in enumerate(signal) for expert, value in enumerate(row)]
    return [(layer, expert) for _, layer, expert in sorted(cells)]
