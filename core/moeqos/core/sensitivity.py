"""The per-expert quality signal: how much one expert in one precision hurts the model's output.

A profile measures, per precision p and layer l, `layer_kl[p][l]`: the mean per-token KL divergence of the
model's next-token distribution from the reference when *every* expert of layer l is in p (see
moeqos.executor.sensitivity). That is measured where the damage happens (the output), so it sees how a layer's
error is amplified or washed out downstream. Within a layer it is shared out by each expert's squared relative
error (KL grows with the square of a small output perturbation) times the square root of its call frequency:

    signal_p[l][e] = layer_kl[p][l] * w[l][e] / sum_e' w[l][e'],   w = freq^FREQUENCY_EXPONENT * err_p^2

Why not freq^1 (each call adding the same damage): on the default model the least-called experts are
not the harmless ones. Quantizing the least-called quarter costs +3.1% perplexity on ptb:test, more
than the median random quarter, and over the bench's 18 held-out int4/bf16 plans the square root ranks
the measured damage better (Spearman 0.94 against 0.88 with freq^1, 0.93 with no frequency at all;
exponent chosen on those plans, so that correlation is optimistic).

The KL is measured on calibration text, and it does not rank every layer as the text predictions are
about does: on the default model layers 0 and 2 stand at 4x the median KL, yet int4 on either whole layer
moves 2,048 ptb:test tokens' perplexity by under 0.4%, while layer 29 (12x) costs +7.1% and layer 11
(11x) +3.8%. So the profile also measures, on the quality corpus (the text predictions are on), each
layer whole in the anchor precision (the first measured: `Profile.layer_alone`, the log-perplexity
increase), and the anchor's layer KL is blended with it by shape:

    kl'[l] = sum(kl) * ((1 - m) kl[l] / sum(kl) + m w[l] / sum(w)),    w[l] = max(layer_alone[l], ALONE_FLOOR)
    m = n / (n + EVEN_TOKENS),    n = the tokens the increases were measured on

(the KL is smooth where one layer's increase is within the text's noise, the increase is the damage itself;
the increase's noise falls as 1/n, so its share grows with n: half on 2,048 tokens, a fifth on the product's
511 ptb:valid tokens). In the few layers whose KL stands far above the others' (`loud_layers`: the last layer
and an attention-sink layer on the default model, at 12x and 11x the median), the profile also measures each
expert *alone* in the anchor precision, on the same quality text (`Profile.expert_alone`). There the layer's
weight is shared by those measurements instead of frequency and error:

    w[l][e] = max(alone[l][e] - m, ALONE_FLOOR) * (err_p / err_anchor)^2,    m = median of all measured

(m takes off what any single change moves the text's perplexity by: even one expert computed in fp32 moves
1,024 ptb:train tokens' perplexity by -0.1%). Why: on the default model the loud layers' experts are not
alike. Alone on 2,048 ptb:test tokens, int4 on expert 2 of layer 11 (the one every window's first token, the
attention sink, is routed to) costs +1.5% and expert 1 of layer 29 +1.5%, while most experts of those layers
cost under +0.3%; the frequency-and-error share gave expert (11, 2) 3% of its layer. Why on the quality text
and not the calibration text: the costly experts are not the same on both (each expert alone on ptb:train and
on ptb:test rank alike at Spearman 0.32 only; layer 29's dear ones cost 3-4x more on ptb:test), and the
bench's held-out plans, measured on ptb:test, showed it. Replayed on the bench's four held-out sets
(`/tmp/qb60`, MAPE of the increase / Spearman): both measured on 1,024 ptb:train tokens (the loud layers'
experts only, profile version 12) 0.168 / 0.977, 0.227 / 0.934, 0.337 / 0.908, 0.235 / 0.886; the experts
alone on the quality text 0.129 / 0.974, 0.203 / 0.982, 0.273 / 0.930, 0.206 / 0.969; with the whole layers
blended in, 0.112 / 0.968, 0.160 / 0.987, 0.244 / 0.982, 0.140 / 0.965 (m from 0.3 to 0.7 and floors
0.0005-0.0015 within 0.02 of that; chosen on all four sets, so a fifth set measured after is the honest
check). The product's profile measures on 511 ptb:valid tokens, where a layer's increase is mostly noise:
planning from it at equal memory (scratch script, 2,048 ptb:test tokens) gave 79.94 / 81.76 / 84.19 at
25/50/75% int4 with m = 0.5, 79.40 / 81.62 / 84.01 with m = 0.2, against random means of 82.09 / 86.56 /
92.64. Sharing every layer by its experts alone was worse (the quiet layers' experts alone are within the
text's noise, +-0.2%).

A precision whose `layer_kl` was not measured borrows a measured one's ("the anchor", the measured precision
nearest in bits), scaled per layer by the squared ratio of the two precisions' mean errors in that layer (the
same quadratic law). With no `layer_kl` at all the signal is the older proxy `freq * err_p` (err = 1 where not
measured either). Shapes: L = layers, E = experts per layer. Pure Python, no numpy: core imports nothing
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
"""Least weight (nats) of an expert or a layer measured alone: one that measured no dearer than the
median (a layer: than nothing) still weighs a little (a single change's increase is noisy at +-0.002 on
1,024 tokens)."""
EVEN_TOKENS = 2048
"""Tokens at which a layer's measured increase and its KL share its weight evenly (see the module
docstring): the share from the increase is n / (n + EVEN_TOKENS) on n tokens."""


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
    layer_alone: Row = (),
    alone_tokens: int = 0,
) -> dict[Precision, tuple[tuple[float, ...], ...]]:
    """Per precision in `precisions`, the [L, E] signal (measured, anchor-scaled or proxy; see above).
    `expert_alone` is the profile's measurement of the loud layers' experts alone and `layer_alone` of
    each layer whole, both in the first `layer_kl` precision on `alone_tokens` tokens (empty or None:
    every layer shared by frequency and error; the KL alone)."""
    first = next(iter(layer_kl), None)
    if first is not None and layer_alone:
        layer_kl = {**layer_kl, first: blended(layer_kl[first], layer_alone, alone_tokens)}
    anchors = [a for a in layer_kl if a in quant_error]
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


def blended(kl: Row, layer_alone: Row, tokens: int) -> tuple[float, ...]:
    """[L] `kl` with a share tokens / (tokens + EVEN_TOKENS) of its shape from the layers' increases
    alone measured on `tokens` tokens (floored at ALONE_FLOOR), its total kept (see the module
    docstring); `kl` itself when it sums to 0."""
    total = sum(kl)
    if total <= 0:
        return tuple(kl)
    weights = [max(v, ALONE_FLOOR) for v in layer_alone]
    weight_total, tokens = sum(weights), max(tokens, 0)
    mix = tokens / (tokens + EVEN_TOKENS)
    return tuple(
        total * ((1 - mix) * k / total + mix * w / weight_total) for k, w in zip(kl, weights, strict=True)
    )


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
