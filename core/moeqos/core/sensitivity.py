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
increase x, with its standard error se from the per-token increases, `Profile.layer_alone_error`), and
the anchor's layer KL takes the shape of those increases, each shrunk toward what the KL predicts of it by
its own noise (empirical Bayes):

    mu[l] = a kl[l],    a = sum(kl x / se^2) / sum(kl^2 / se^2)       (the KL's prediction of x)
    r^2 = max(sum(((x - mu)^2 - se^2) / se^2) / sum(mu^2 / se^2), 0)  (how far true increases stray from it)
    x'[l] = mu[l] + m[l] (x[l] - mu[l]),    m[l] = r^2 mu[l]^2 / (r^2 mu[l]^2 + se[l]^2)
    kl'[l] = sum(kl) * w[l] / sum(w),    w[l] = max(x'[l], ALONE_FLOOR)

A layer measured well above its noise keeps its measurement, one within its noise keeps the KL's
prediction, and how far to trust either is read from the profile's own numbers, not a constant (r^2 is
weighted by 1/se^2 so that one very noisy layer does not drown the others' evidence). On the default
model: on the product's 511 ptb:valid tokens (se 0.004-0.014 nats, increases -0.013 to +0.027) the
quiet layers keep 8-39% of their difference from the prediction and layers 11 and 29 about 60%; on the
bench's 2,048 ptb:test tokens (se 0.002-0.008) 29-80% and 89%. Why not a share fixed by the token
count (profile version 13: n / (n + 2,048), a half on 2,048 tokens): in layer 29, with its whole value
half the KL's and half measured, 36 subsets of its experts (pairs to all eight) measured on 2,048
ptb:test tokens were predicted at 0.74 of their measurement (MAPE 0.29), and at its measured value
within 6%; while on 511 ptb:valid tokens, planning at 25% int4 from the measurements in full gave 79.77
on ptb:test (the random picks' mean: 82.09), from the fixed share 79.57, from this shrinkage 79.35-79.48.

In the few layers whose KL stands far above the others' (`loud_layers`: the last layer and an
attention-sink layer on the default model, at 12x and 11x the median), the profile also measures each
expert *alone* in the anchor precision, on the same quality text (`Profile.expert_alone`). There the
layer's weight is shared by those measurements instead of frequency and error:

    w[l][e] = max(alone[l][e], ALONE_FLOOR) * (err_p / err_anchor)^2

Why: on the default model the loud layers' experts are not alike. Alone on 2,048 ptb:test tokens, int4 on
expert 2 of layer 11 (the one every window's first token, the attention sink, is routed to) costs +1.5%
and expert 1 of layer 29 +1.5%, while most experts of those layers cost under +0.3%; the
frequency-and-error share gave expert (11, 2) 3% of its layer. The increases are taken as measured (until
profile version 13 the median of all of them was taken off first, as what any single change moves the
text by): with the median off, layer 29's subsets above ranked at 0.968 and layer 11's at 0.924, without
it at 0.998 and 0.963 (the median halved the weight of the middle expert (29, 6)). Why on the quality
text and not the calibration text: the costly experts are not the same on both (each expert alone on
ptb:train and on ptb:test rank alike at Spearman 0.32 only; layer 29's dear ones cost 3-4x more on
ptb:test). Sharing every layer by its experts alone was worse (the quiet layers' experts alone are within
the text's noise, +-0.2%).

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
"""Least weight (nats) of an expert or a layer measured alone: one that measured no dearer than nothing
still weighs a little (a single change's increase is noisy at +-0.002 on 2,048 tokens)."""
LEAST_STANDARD_ERROR = 1e-9
"""Standard errors are taken at least this (nats): a layer that changed no token's likelihood at all has
a standard error of 0, and is then trusted fully, without dividing by 0."""


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
    layer_alone_error: Row = (),
) -> dict[Precision, tuple[tuple[float, ...], ...]]:
    """Per precision in `precisions`, the [L, E] signal (measured, anchor-scaled or proxy; see above).
    `expert_alone` is the profile's measurement of the loud layers' experts alone and `layer_alone` of
    each layer whole with its standard errors `layer_alone_error`, both in the first `layer_kl` precision
    (empty or None: every layer shared by frequency and error; the KL alone)."""
    first = next(iter(layer_kl), None)
    if first is not None and layer_alone:
        layer_kl = {**layer_kl, first: shrunk(layer_kl[first], layer_alone, layer_alone_error)}
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


def shrunk(kl: Row, layer_alone: Row, standard_error: Row) -> tuple[float, ...]:
    """[L] `kl` in the shape of the layers' increases `layer_alone`, each shrunk toward the KL's
    prediction of it by its `standard_error` (empirical Bayes, see the module docstring), floored at
    ALONE_FLOOR, its total kept; `kl` itself when it sums to 0. When the KL predicts no increase at all
    (it does not rise with the measurements) the measurements are taken as they are."""
    total = sum(kl)
    if total <= 0:
        return tuple(kl)
    variance = [max(se, LEAST_STANDARD_ERROR) ** 2 for se in standard_error]  # [L]
    rows = list(zip(kl, layer_alone, variance, strict=True))  # [L] (kl, x, se^2)
    slope = sum(k * x / v for k, x, v in rows) / sum(k * k / v for k, _, v in rows)
    prior = [max(slope, 0.0) * k for k in kl]  # [L] the KL's prediction of each increase
    scale = sum(m * m / v for m, (_, _, v) in zip(prior, rows, strict=True))
    if scale <= 0:  # the KL predicts nothing: the measurements as they are
        posterior = list(layer_alone)
    else:
        stray = sum(((x - m) ** 2 - v) / v for m, (_, x, v) in zip(prior, rows, strict=True))
        spread = max(stray / scale, 0.0)  # r^2: the true increases' relative spread about the prediction
        posterior = [
            m + spread * m * m / (spread * m * m + v) * (x - m)
            for m, (_, x, v) in zip(prior, rows, strict=True)
        ]
    weights = [max(x, ALONE_FLOOR) for x in posterior]
    weight_total = sum(weights)
    return tuple(total * w / weight_total for w in weights)


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
    """Per measured layer, [E] weights max(alone, ALONE_FLOOR), times (err / anchor err)^2 per expert
    where both errors are known (a precision borrowing the anchor's measurement, by the same quadratic
    law as `_scaled`)."""
    out = {}
    for layer, row in expert_alone.items():
        weights = [max(v, ALONE_FLOOR) for v in row]
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
