"""Predicted perplexity under a plan, fitted to a Profile's measured plans.

    log ppl(plan) = log ppl_ref + D + kappa * D^2 + sum_d L_d,    D = sum_l [(1 - o_l) sum_e t_e + o_l (sum_e sqrt(t_e a_e))^2]

with t_e = c_{p(e)} * s_p[l][e] the term of expert e of layer l in its precision p. `s_p[l][e]` is the
expert's signal in p (moeqos.core.sensitivity: the measured output KL of its layer in p, shaped by the
layer's measured increase alone as far as that rises above its noise, shared out by sqrt(frequency) times
squared error, in the loud layers by each expert's measured increase alone; without a measured KL, the
older proxy freq * err_p), a_e = s_p[l][e]
/ sum_e' s_p[l][e'] its share of the layer's signal, `c_p >= 0` one coefficient per precision and
`kappa >= 0` how damage compounds across layers. `o_l` is the layer's error overlap (core
Profile.error_overlap): the share of its routed output-error energy in the cross terms of a token's
experts. With o = 0 the experts' terms add up; with o > 0 a layer's damage is part linear, part the square
of the share of it that is quantized (a token whose two experts are both quantized carries both errors,
and identical experts make the same one): on the default model (o = 0.5) a random quarter of a layer costs
0.16 of the whole layer, not 0.25, and without it the additive fit missed random picks by 1.5x at a
quarter and needed kappa ~700 to bend them back.
The whole-layer value (every expert of a layer in p) is sum_e t_e either way, and by Cauchy-Schwarz the
square part never exceeds it, so sum_e t_e bounds D from above, exactly for whole layers: the solver
minimises that linear bound in a MILP (`expert_terms`) and turns a perplexity cap into a cap on it
(`term_cap`), so a plan planned under a cap is predicted within it. Without a measured overlap (o = 0)
the bound is D. L_d is the log-perplexity increase the profile measured for dense element d alone in
the plan's precision for it (moeqos.planner.dense_model); dense elements add to the experts' damage,
they do not compound with it (`dense_log_ppl`). In the MILP's linear sum an element counts as the term
that adds its measured increase at the experts' damage, a gain under a perplexity cap as no more than
it frees at the cap (`dense_term`).

Fitting: the measured plans are the profile's quality points besides the reference and, when the
profile measured them (`Profile.layer_alone`), each whole layer alone in the anchor precision (below): a
plan of one whole layer, whose D is exactly its summed signal. Those single layers pin the anchor's
scale where the designed plans are few and noisy: on the product's 511 ptb:valid tokens the riskiest
designed int4 quarter measured as much as all-int4 and the safest half a gain, and those four plans
alone fitted the strongest compounding tried (1,800) with a coefficient 21x below the bench's, its
leave-one-out error 6,300%; with the 30 layers the compounding is 6.8 and the error 87%. On the
bench's 2,048 ptb:test tokens (compounding 4.3 -> 2.2, error 35% -> 31%) replaying its six held-out
sets moved their MAPE of the increase from 0.152/0.166/0.173/0.258/0.157/0.090 to
0.138/0.183/0.162/0.224/0.149/0.085 (the ranks are the link's: unchanged). With at least as many
measured plans (besides the reference) as precisions that appear in them, for each kappa of KAPPAS the
`c_p` are fitted by non-negative least squares (scipy.optimize.nnls) to each plan's D (a plan's D is
linear in c_p as long as each layer holds one lossy precision, as every measured plan does; cross terms
of two lossy precisions in one layer are left out of the fit's rows) (its log ratio through the
inverse of the link), each plan weighted by
1 / max(its log ratio, MIN_INCREASE) so that small increases (the plans a planner actually picks)
count as much as uniform corners. Kappa is chosen on the plans of the *anchor* precisions alone (those
whose layer KL the profile measured, when at least two measured plans use nothing else): their signal
is measured, the other precisions borrow it scaled by their errors, and they borrow its compounding
too; each precision's `c_p` is then fitted at that kappa (a plan of one lossy precision informs only
that precision's coefficient). Fitted on every plan, the catastrophic int2 corners (perplexity x1000)
pulled kappa away from what the anchor's own plans show.
The fit is checked by leave-one-out (kappa chosen again without the plan left out): `holdout_error` is the
mean absolute relative error of the perplexity *increase* (ppl / ref - 1) of each plan predicted by a
fit without it (the quality points only: a layer measured alone shaped the signal, so leaving it out of
the fit would not hold it out; counted, they brought the bench's error from 31% to 15%); a plan
measured BROKEN_LOG_INCREASE or more above the reference only has to be predicted at least that
broken (its miss is the prediction's shortfall below that point: how much worse a broken model is
carries no information for a planner, and those corners would otherwise outweigh every working plan,
as the bench's 1468% did). When that error is unknown or above ESTIMATE_THRESHOLD, every prediction
of a plan with a lossy precision is labelled an estimate.
Otherwise, and for precisions no measured plan uses, `c_p` comes from moeqos.planner.priors: the prior
log-ppl increase of a uniform plan divided by that plan's total `s_p`; with fewer measured plans than
precisions but at least one, all priors are multiplied by one scale fitted to them. Predictions that
rest on a prior (scaled or not) are marked as estimates. Predictions are on `corpus`, the corpus the
reference and the fitted plans were measured on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from moeqos.core.dense import DenseElement, DensePrecisions
from moeqos.core.errors import InvalidArgument
from moeqos.core.plan import Plan, parse_plan
from moeqos.core.precision import Precision
from moeqos.core.profile import Grid, Profile, QualityPoint
from moeqos.core.sensitivity import signal_grids
from moeqos.planner.dense_model import DenseModel
from moeqos.planner.identity import FitIdentity
from moeqos.planner.priors import PRIOR_LOG_PPL_INCREASE, PRIOR_SOURCE
from scipy.optimize import nnls

ESTIMATE_THRESHOLD = 0.25
"""Above this cross-validated error of the increase, predictions are labelled estimates."""
MIN_INCREASE = 0.02
"""Floor of a plan's perplexity increase (and log ratio) in the fit weights and the holdout error, so
near-lossless plans (int8: +0.1%) do not turn a 0.1-point miss into a 100% error. At 0.01 the default
model's safest designed quarter (+0.02% on 2,048 ptb:test tokens, predicted +0.4%) weighed like a 40% miss
of a +1% plan and pulled the int4 coefficient down: random picks were predicted at 0.5-0.9 of their
measured increase. A point or two is also what one plan's increase moves between 512-token windows of
the same text (the product fits on 512). Chosen by replaying the bench's first two held-out sets (MAPE of
the increase 0.31 / 0.23 at 0.01, 0.21 / 0.23 at 0.02); the third set, measured after, does not prefer
it (0.43 at 0.01, 0.47 at 0.02)."""
MAX_LOG_INCREASE = 50.0
"""Predicted log-perplexity increases saturate here (perplexity x 5e21): a model broken that badly is
broken however much worse, and exp() of the compounding curve's square would overflow a float."""
BROKEN_LOG_INCREASE = 1.0
"""A plan measured this much above the reference (log perplexity; x e) is broken: the leave-one-out
check only asks that it be predicted at least that broken (see the module docstring)."""
KAPPAS = (0.0, *(0.05 * 1.25**i for i in range(48)))
"""Compounding strengths tried by the fit (0: additive log-perplexity; the largest, about 1,800, makes a
D of 0.01 cost 0.19): the fits on the default model pick 2-7 (the bench's and the product's)."""


@dataclass(frozen=True)
class QualityModel:
    """A fitted perplexity model (plain data; `to_dict`/`from_dict`)."""

    identity: FitIdentity
    reference_perplexity: float
    reference_precision: Precision
    reference_source: str
    sensitivity: dict[Precision, Grid]
    """Per precision, [L, E] freq * err (0 for the reference precision)."""
    coefficients: dict[Precision, float]
    fitted: frozenset[Precision]
    """Precisions whose coefficient was fitted to measurements (the rest are priors)."""
    basis: str
    holdout_error: float | None = None
    """Leave-one-out mean absolute relative error of the perplexity increase over the measured plans
    (None when not computable; see the module docstring)."""
    holdout_points: int = 0
    corpus: str = ""
    """The corpus predictions are on: where the reference and the fitted plans were measured."""
    compounding: float = 0.0
    """kappa: the log-perplexity increase is D + kappa * D^2 for a plan whose expert terms sum to D."""
    dense: DenseModel = field(default_factory=DenseModel)
    """The dense elements' log-ppl terms (moeqos.planner.dense_model)."""
    overlap: tuple[float, ...] = ()
    """[L] o_l, each layer's error overlap (empty: 0 everywhere, the experts' terms add up)."""

    # ----- fitting ------------------------------------------------------------------------------
    @classmethod
    def fit(cls, profile: Profile, prior_reference: tuple[float, str] | None = None) -> QualityModel:
        """Fit to `profile.quality_points`; `prior_reference` (perplexity, source) stands in for an
        unmeasured full-precision reference. Raises InvalidArgument with no reference at all."""
        ref_ppl, ref_precision, ref_source, ref_spec = _reference(profile, prior_reference)
        sensitivity = _sensitivity(profile, ref_precision)
        overlap = profile.error_overlap if profile.layer_kl else ()
        points = [q for q in profile.quality_points if q.tokens > 0 and q.plan_spec != ref_spec]
        corpus = _corpus(profile, ref_spec)
        points = [q for q in points if not corpus or q.corpus == corpus]
        plan_rows = _design_rows(profile, points, sensitivity, overlap)  # [N, P]
        plan_targets = [math.log(q.perplexity / ref_ppl) for q in points]
        alone_rows, alone_targets = _alone_rows(profile, sensitivity)  # [L, P], [L]
        rows = np.vstack([plan_rows, alone_rows])  # [N + L, P]
        targets = np.array(plan_targets + alone_targets)  # [N + L]
        anchors = _anchor_columns(profile.layer_kl)
        coefficients, fitted, scale, kappa = _coefficients(rows, targets, sensitivity, anchors)
        holdout = _leave_one_out(rows, targets, sensitivity, anchors, held_out=len(points))
        signal = "output-KL signal" if profile.layer_kl else "frequency x error signal"
        if profile.layer_kl and profile.layer_alone:
            signal += " shaped by each layer measured alone, weighed by its noise"
        if profile.expert_alone:
            loud = ", ".join(str(layer) for layer in sorted(profile.expert_alone))
            signal += f" (layers {loud} shared by their experts measured alone)"
        if overlap:
            signal += f", layers' error overlap {min(overlap):.2f}-{max(overlap):.2f}"
        measured = f"{len(points)} measured plans"
        if alone_targets:
            measured += f" and {len(alone_targets)} layers measured alone"
        if fitted:
            basis = (
                f"{signal}, fitted (nnls) to {measured} on {corpus or 'an unnamed corpus'} "
                f"for {', '.join(sorted(fitted))}, compounding {kappa:.3g}"
                + (f" (from the {', '.join(sorted(profile.layer_kl))} plans)" if anchors else "")
            )
            if set(coefficients) - fitted - {ref_precision}:
                basis += "; other precisions from priors"
        elif scale is not None:
            basis = (
                f"{PRIOR_SOURCE}, scaled by {scale:.3g} to fit {measured} "
                "(too few for one coefficient per precision)"
            )
        else:
            basis = f"{PRIOR_SOURCE}; no measured plans besides the reference"
        return cls(
            FitIdentity.of(profile),
            ref_ppl,
            ref_precision,
            ref_source,
            sensitivity,
            coefficients,
            frozenset(fitted),
            basis,
            holdout,
            len(points) if holdout is not None else 0,
            corpus,
            kappa,
            DenseModel.fit(profile),
            tuple(overlap),
        )

    # ----- prediction ---------------------------------------------------------------------------
    def expert_terms(self, precision: Precision) -> np.ndarray:
        """[L, E] each expert's term t_e in `precision`: the MILP's linear bound of D (module docstring),
        exact for whole layers."""
        return self.coefficients[precision] * np.asarray(self.sensitivity[precision])

    def expert_damage(self, plan: Plan) -> float:
        """The experts' part of D for `plan`: each layer's terms, part added, part (its overlap) the
        square of their amplitudes' sum (module docstring)."""
        layers = len(self.sensitivity[self.reference_precision])
        terms: list[list[float]] = [[] for _ in range(layers)]
        amplitudes: list[list[float]] = [[] for _ in range(layers)]
        for (layer, expert), a in plan.items():
            row = self.sensitivity[a.precision][layer]
            term = self.coefficients[a.precision] * row[expert]
            total = sum(row)
            terms[layer].append(term)
            amplitudes[layer].append(math.sqrt(term * row[expert] / total) if total > 0 else 0.0)
        return sum(
            _layer_damage(t, a, self.overlap[layer] if self.overlap else 0.0)
            for layer, (t, a) in enumerate(zip(terms, amplitudes, strict=True))
        )

    def predict_log_increase(self, plan: Plan) -> float:
        """The experts' damage through the compounding link, plus each dense element's own measured
        log-perplexity increase (`dense_log_ppl`)."""
        return float(self.log_increase_of_terms(self.expert_damage(plan))) + self.dense_log_ppl(plan.dense)

    def dense_log_ppl(self, dense: DensePrecisions) -> float:
        """The dense part's log-perplexity increase: the sum of its elements' increases as the profile
        measured each alone, outside the experts' compounding. Measured on the default model (2,048
        ptb:test tokens): int4 attention alone +0.194, the int4 head alone +0.169, both with lossless
        experts +0.368 (the sum: 0.362), both with all-int4 experts (+0.212 alone) +0.617 (the sum:
        0.575). Put into the experts' D instead, as the terms whose link is each element's increase,
        the last plan was predicted at +1.195 (perplexity 263, measured 147.6): compounding reads a
        dense element's damage as more of the experts' kind, which it is not."""
        return sum(self.dense.log_ppl(element, precision) for element, precision in dense)

    def dense_term(
        self, element: DenseElement, precision: Precision, damage: float = 0.0, cap: float | None = None
    ) -> float:
        """A dense element's share of the MILP's linear sum of terms for a plan whose experts' terms sum
        to about `damage`: the T with link(damage + T) = link(damage) + its measured log-ppl, so that the
        linear sum predicts the additive increase at that point (exact at `damage`, and for one element
        alone at 0; for a loss the link's convexity makes it pessimistic elsewhere, and two losses cost
        at least their sum). The solver re-solves at the damage its plan's experts reach
        (moeqos.planner.solver). Under a perplexity cap (`cap`, the largest log-perplexity increase
        allowed) an element counts at least term_cap(cap) - term_cap(cap - its log-ppl): a gain is
        worth no more than it frees at the cap (a loss, already priced at least that, is unchanged in
        practice): at lossless experts a gain counts 1:1 in D while a loss is pressed by the link's
        convexity, and with a strong compounding (a fit on 511 noisy tokens chose 1,800) the int8 head's
        0.7% gain licensed int4 attention's 18% loss; the search then answered a reachable ceiling with
        InfeasibleTarget."""
        increase = self.dense.log_ppl(element, precision)
        target = float(self.log_increase_of_terms(damage)) + increase
        gain = target < 0  # the link does not compound below 0
        term = target - damage if gain else float(_inverse_link(target, self.compounding)) - damage
        if cap is None:
            return term
        return max(term, self.term_cap(cap) - self.term_cap(cap - increase))

    def log_increase_of_terms(self, terms: Any) -> Any:
        """Log-perplexity increase of a plan whose expert terms sum to `terms` (a float or an array),
        before its dense part's (`dense_log_ppl`)."""
        return _link(terms, self.compounding)

    def term_cap(self, log_increase: float) -> float:
        """The largest sum of expert terms (D) whose predicted log-perplexity increase is within
        `log_increase`: a perplexity cap as the MILP's linear constraint. A cap below the reference
        (negative `log_increase`, reachable when some element measured better) is D itself: the link
        does not compound gains."""
        if log_increase < 0:
            return log_increase
        return float(_inverse_link(log_increase, self.compounding))

    def predict_perplexity(self, plan: Plan) -> float:
        return self.reference_perplexity * math.exp(min(self.predict_log_increase(plan), MAX_LOG_INCREASE))

    @property
    def trusted(self) -> bool:
        """True when the cross-validated error is known and within ESTIMATE_THRESHOLD."""
        return self.holdout_error is not None and self.holdout_error <= ESTIMATE_THRESHOLD

    @property
    def is_estimate(self) -> bool:
        """True when any part of the model (reference or a coefficient) is a prior, not a fit, or the
        fit's cross-validated error is unknown or above ESTIMATE_THRESHOLD."""
        return (
            self.reference_source.startswith("prior")
            or bool(set(self.coefficients) - set(self.fitted) - {self.reference_precision})
            or not self.trusted
        )

    def plan_is_estimate(self, plan: Plan) -> bool:
        """True when predicting `plan` uses a prior (its reference, or a precision not fitted) or, for a
        plan with a lossy expert, a fit whose cross-validated error is unknown or too large."""
        exact = set(self.fitted) | {self.reference_precision}
        precisions = {a.precision for a in plan.counts()}
        lossy = bool(precisions - {self.reference_precision})
        return (
            self.reference_source.startswith("prior")
            or any(p not in exact for p in precisions)
            or (lossy and not self.trusted)
            or self.dense.is_estimate(plan.dense)
        )

    # ----- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity.to_dict(),
            "reference_perplexity": self.reference_perplexity,
            "reference_precision": self.reference_precision.value,
            "reference_source": self.reference_source,
            "sensitivity": {p.value: [list(r) for r in g] for p, g in self.sensitivity.items()},
            "coefficients": {p.value: c for p, c in self.coefficients.items()},
            "fitted": sorted(p.value for p in self.fitted),
            "basis": self.basis,
            "holdout_error": self.holdout_error,
            "holdout_points": self.holdout_points,
            "corpus": self.corpus,
            "compounding": self.compounding,
            "dense": self.dense.to_dict(),
            "overlap": list(self.overlap),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityModel:
        return cls(
            FitIdentity.from_dict(data["identity"]),
            float(data["reference_perplexity"]),
            Precision(data["reference_precision"]),
            str(data["reference_source"]),
            {
                Precision(p): tuple(tuple(float(x) for x in r) for r in g)
                for p, g in data["sensitivity"].items()
            },
            {Precision(p): float(c) for p, c in data["coefficients"].items()},
            frozenset(Precision(p) for p in data["fitted"]),
            str(data["basis"]),
            None if data.get("holdout_error") is None else float(data["holdout_error"]),
            int(data.get("holdout_points", 0)),
            str(data.get("corpus", "")),
            float(data.get("compounding", 0.0)),
            DenseModel.from_dict(data.get("dense")),
            tuple(float(x) for x in data.get("overlap", ())),
        )


def _reference(profile: Profile, prior: tuple[float, str] | None) -> tuple[float, Precision, str, str | None]:
    """(perplexity, precision, source, plan spec) of the reference: the most precise uniform plan in a
    float precision (a uniform int8 plan is an ordinary quality point, not a reference)."""
    reference = profile.reference_point()
    if reference:
        best, precision = reference
        source = f"measured: {best.plan_spec} on {best.corpus}, {best.tokens} tokens"
        if best.tokens <= 0:
            source = f"prior: {best.plan_spec} on {best.corpus} (published, not measured)"
        return best.perplexity, precision, source, best.plan_spec
    if prior is None:
        raise InvalidArgument(
            "the profile has no full-precision perplexity; measure a uniform bf16 plan first"
        )
    return prior[0], Precision.BF16, f"prior: {prior[1]}", None


def _corpus(profile: Profile, ref_spec: str | None) -> str:
    """The reference's corpus, else the corpus most measured plans used ('' with none)."""
    named = [q.corpus for q in profile.quality_points if q.plan_spec == ref_spec]
    named = named or [q.corpus for q in profile.quality_points if q.tokens > 0]
    return max(set(named), key=named.count) if named else ""


def _sensitivity(profile: Profile, reference: Precision) -> dict[Precision, Grid]:
    """The per-expert signal per precision (moeqos.core.sensitivity), 0 for the reference precision."""
    grids = signal_grids(
        profile.frequency,
        profile.quant_error,
        profile.layer_kl,
        list(Precision),
        profile.expert_alone,
        profile.layer_alone,
        profile.layer_alone_error,
    )
    zero = tuple(tuple(0.0 for _ in row) for row in profile.frequency)
    return {p: zero if p == reference else grids[p] for p in Precision}


def _design_rows(
    profile: Profile, points: list[QualityPoint], sens: dict[Precision, Grid], overlap: Sequence[float]
) -> np.ndarray:
    """[N, P] per measured plan and precision (enum order), its experts' part of D at c_p = 1: per
    layer, the signal of its experts in that precision through `_layer_damage`."""
    m = profile.model
    precisions = list(Precision)
    rows = np.zeros((len(points), len(precisions)))
    for i, q in enumerate(points):
        plan = parse_plan(
            q.plan_spec, m.num_layers, m.num_experts, profile.hardware.device, profile.group_size
        )
        chosen: dict[tuple[Precision, int], list[float]] = {}
        for (layer, expert), a in plan.items():
            chosen.setdefault((a.precision, layer), []).append(sens[a.precision][layer][expert])
        for (precision, layer), signal in chosen.items():
            total = sum(sens[precision][layer])
            amplitudes = [math.sqrt(x * x / total) if total > 0 else 0.0 for x in signal]
            o = overlap[layer] if overlap else 0.0
            rows[i, precisions.index(precision)] += _layer_damage(signal, amplitudes, o)
    return rows


def _alone_rows(profile: Profile, sens: dict[Precision, Grid]) -> tuple[np.ndarray, list[float]]:
    """([L, P] rows, [L] log ratios) of the whole layers the profile measured alone in the anchor
    precision (the first `layer_kl` one, `Profile.layer_alone`): measured plans of one whole layer each,
    whose part of D at c = 1 is the layer's signal summed (exact for a whole layer). None (0 rows)
    without such measurements."""
    precisions = list(Precision)
    if not profile.layer_alone or not profile.layer_kl:
        return np.zeros((0, len(precisions))), []
    anchor = next(iter(profile.layer_kl))
    rows = np.zeros((len(profile.layer_alone), len(precisions)))
    rows[:, precisions.index(anchor)] = [sum(row) for row in sens[anchor]]
    return rows, [float(x) for x in profile.layer_alone]


def _layer_damage(terms: Sequence[float], amplitudes: Sequence[float], overlap: float) -> float:
    """One layer's part of D: (1 - o) sum t_e + o (sum sqrt(t_e a_e))^2, from the terms t_e and the
    amplitudes sqrt(t_e a_e) of its experts (module docstring)."""
    return (1.0 - overlap) * sum(terms) + overlap * sum(amplitudes) ** 2


def _prior_coefficients(sens: dict[Precision, Grid]) -> dict[Precision, float]:
    totals = {p: float(np.sum(g)) for p, g in sens.items()}
    return {p: (PRIOR_LOG_PPL_INCREASE[p] / totals[p] if totals[p] > 0 else 0.0) for p in Precision}


def _anchor_columns(layer_kl: dict[Precision, Any]) -> list[int]:
    """Columns (enum order) of the precisions whose layer KL was measured: kappa's precisions."""
    return [i for i, p in enumerate(Precision) if p in layer_kl]


def _coefficients(
    rows: np.ndarray,
    targets: np.ndarray,
    sens: dict[Precision, Grid],
    anchors: Sequence[int] = (),
) -> tuple[dict[Precision, float], set[Precision], float | None, float]:
    """(coefficients, precisions fitted, prior scale, kappa): an nnls fit of each precision the plans use
    at the kappa of KAPPAS that fits the anchor plans best (all plans without two anchor plans) when
    there are at least as many plans as precisions; with fewer, the priors times one fitted scale
    (additive); with none, priors."""
    coefficients = _prior_coefficients(sens)
    support = np.flatnonzero(np.abs(rows).sum(axis=0) > 0)
    if support.size == 0:
        return coefficients, set(), None, 0.0
    weights = 1.0 / np.maximum(np.abs(targets), MIN_INCREASE)  # [N] relative, not absolute, errors
    if rows.shape[0] < support.size:
        prior = np.array([coefficients[p] for p in Precision])  # [P]
        (scale,), _ = nnls((weights * (rows @ prior))[:, None], weights * targets)
        return {p: float(scale) * c for p, c in coefficients.items()}, set(), float(scale), 0.0
    kappa = _kappa(rows, targets, weights, _anchor_rows(rows, anchors))
    _, solution, _ = _fit_at(rows[:, support], targets, weights, kappa)
    precisions = list(Precision)
    for column, value in zip(support, solution, strict=True):
        coefficients[precisions[column]] = float(value)
    return coefficients, {precisions[c] for c in support}, None, kappa


def _anchor_rows(rows: np.ndarray, anchors: Sequence[int]) -> np.ndarray:
    """[N] True for plans with an anchor-precision expert and no expert in another lossy precision
    (all True when fewer than two such plans: kappa is then chosen on every plan)."""
    lossy = np.abs(rows) > 0  # [N, P]
    mask = lossy[:, list(anchors)].any(axis=1) & ~np.delete(lossy, list(anchors), axis=1).any(axis=1)
    return mask if mask.sum() >= 2 else np.ones(rows.shape[0], dtype=bool)


def _kappa(rows: np.ndarray, targets: np.ndarray, weights: np.ndarray, chosen: np.ndarray) -> float:
    """The kappa of KAPPAS whose nnls fit of the `chosen` plans misses them least."""
    sub = rows[chosen]
    support = np.flatnonzero(np.abs(sub).sum(axis=0) > 0)
    fits = [_fit_at(sub[:, support], targets[chosen], weights[chosen], kappa) for kappa in KAPPAS]
    return min(fits, key=lambda fit: fit[0])[2]


def _fit_at(
    rows: np.ndarray, targets: np.ndarray, weights: np.ndarray, kappa: float
) -> tuple[float, np.ndarray, float]:
    """(weighted squared miss of the log ratios, [P'] coefficients, kappa) fitted at one `kappa`:
    nnls of `rows` [N, P'] against the targets' D."""
    terms = _inverse_link(np.maximum(targets, 0.0), kappa)  # [N]
    solution, _ = nnls(weights[:, None] * rows, weights * terms)
    miss = float(np.sum((weights * (_link(rows @ solution, kappa) - targets)) ** 2))
    return miss, solution, kappa


def _link(terms: Any, kappa: float) -> Any:
    """Log-perplexity increase of summed expert terms D (a float or an array): D + kappa * D^2 for
    D >= 0, D itself below. D is negative only as a cap (`term_cap` of a cap below the reference, which
    a dense part measured better than it can leave to the experts); the square would turn that gain into
    a loss once kappa is large, and the MILP's cap is only right for a link that rises with D everywhere."""
    gain_free = np.maximum(terms, 0.0)
    return terms + kappa * gain_free * gain_free


def _inverse_link(log_increase: Any, kappa: float) -> Any:
    """The D whose `_link` is `log_increase` (>= 0)."""
    if kappa <= 0:
        return log_increase
    return (np.sqrt(1.0 + 4.0 * kappa * log_increase) - 1.0) / (2.0 * kappa)


def _leave_one_out(
    rows: np.ndarray,
    targets: np.ndarray,
    sens: dict[Precision, Grid],
    anchors: Sequence[int] = (),
    held_out: int | None = None,
) -> float | None:
    """Mean |predicted - measured| / max(measured, MIN_INCREASE) of the perplexity increase of each of
    the first `held_out` plans (all by default) predicted by a fit without it; a plan measured beyond
    BROKEN_LOG_INCREASE misses only by its prediction's shortfall below that point (None with < 2
    plans held out). The layers measured alone are fitted but never held out: the signal was shaped by
    them, so a fit without one of them still carries it."""
    held_out = rows.shape[0] if held_out is None else held_out
    if held_out < 2:
        return None
    broken = math.expm1(BROKEN_LOG_INCREASE)
    errors = []
    for i in range(held_out):
        keep = np.arange(rows.shape[0]) != i
        coefficients, _, _, kappa = _coefficients(rows[keep], targets[keep], sens, anchors)
        vector = np.array([coefficients[p] for p in Precision])  # [P]
        predicted = math.expm1(min(_link(rows[i] @ vector, kappa), MAX_LOG_INCREASE))
        measured = math.expm1(min(targets[i], MAX_LOG_INCREASE))
        if measured >= broken:
            predicted, measured = min(predicted, broken), broken
        errors.append(abs(predicted - measured) / max(measured, MIN_INCREASE))
    return float(np.mean(errors))
