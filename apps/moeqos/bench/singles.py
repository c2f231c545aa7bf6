"""Section `singles` (opt-in): every expert quantized alone, and what that costs on two texts.

The quality model (moeqos.planner.quality_model) predicts a plan from a per-expert signal and a rule for
how damage combines across experts and layers. When its held-out predictions miss, this section tells
the two apart: each expert in int4 with everything else at full precision, its log-perplexity increase
measured on the eval tokens (ptb:test, `eval_tokens`) and on half as many calibration tokens
(ptb:train, the text a profile measures on). It reports
- the experts that cost most alone on the eval tokens, with what each costs on the calibration text
  (a cost that repeats on other text is the expert's; one that does not is the text's);
- the median single increase per text: what "any one change" moves that text's perplexity;
- the rank agreement (Spearman) of the two texts' singles: how far a per-expert measurement on
  calibration text can rank the experts for the eval text;
- the sum of every single increase against the increase of the plan with all of them at once: how far
  from additive the experts' damage is.
Cost: L x E + 2 evaluations per text (the default model: 242 on 2,048 plus 242 on 1,024 tokens, about
15 minutes on 2 cores), so it runs only when named (`--only singles`).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from moeqos.bench.quality_plans import spearman
from moeqos.bench.report import SectionResult, table
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision

PRECISION = Precision.INT4
"""The precision each expert is quantized to alone (the planner's usual lossy choice)."""
CALIBRATION_CORPUS = "ptb:train"
SHOWN = 10
"""Experts listed in the table (the costliest on the eval tokens)."""

Expert = tuple[int, int]


def single_increases(
    ctx: Any, ids: list[int], reference: Plan, precision: Precision
) -> tuple[dict[Expert, float], float]:
    """({expert: log-perplexity increase with it alone in `precision`}, the increase with every expert in
    `precision` at once) on `ids`, against `reference`."""

    def log_ppl(plan: Plan) -> float:
        evaluation = ctx.runtime.evaluate(
            ids, plan, context_length=ctx.settings.context_length, decode_tokens=0
        )
        return math.log(evaluation.perplexity)

    base = log_ppl(reference)
    layers, experts = ctx.shape
    singles = {}
    for expert in ((layer, index) for layer in range(layers) for index in range(experts)):
        singles[expert] = log_ppl(reference.with_expert(*expert, precision)) - base
        ctx.log(f"singles: L{expert[0]}.E{expert[1]} {singles[expert]:+.4f} on {len(ids)} tokens")
    every = log_ppl(reference.with_layers(range(layers), precision)) - base
    return singles, every


def run(ctx: Any) -> SectionResult:
    """Each expert alone in int4 on the eval and the calibration tokens (module docstring)."""
    reference = ctx.full_precision
    texts = {
        "eval": ("ptb:test", ctx.test_ids),
        "calibration": (CALIBRATION_CORPUS, ctx.tokens(CALIBRATION_CORPUS, ctx.settings.eval_tokens // 2)),
    }
    measured = {name: single_increases(ctx, ids, reference, PRECISION) for name, (_, ids) in texts.items()}
    on_eval, on_calibration = measured["eval"][0], measured["calibration"][0]
    order = sorted(on_eval, key=lambda e: -on_eval[e])
    rows = [
        [f"L{layer}.E{index}", _percent(on_eval[(layer, index)]), _percent(on_calibration[(layer, index)])]
        for layer, index in order[:SHOWN]
    ]
    agreement = spearman([on_eval[e] for e in order], [on_calibration[e] for e in order])
    notes = [
        f"each expert alone in {PRECISION.value}, the rest {reference.describe()}; increase of perplexity, %",
        f"eval: {texts['eval'][0]}, {len(texts['eval'][1])} tokens; calibration: {texts['calibration'][0]}, "
        f"{len(texts['calibration'][1])} tokens",
    ]
    for name, (singles, every) in measured.items():
        notes.append(
            f"{name}: median single {_percent(statistics.median(singles.values())):+.3g}%, sum of all "
            f"{len(singles)} singles {_percent(sum(singles.values())):+.3g}%, all at once "
            f"{_percent(every):+.3g}%"
        )
    notes.append(f"rank agreement of the two texts' singles (Spearman): {agreement:.3f}")
    result = SectionResult("singles")
    result.tables.append(
        table(
            f"singles: the {SHOWN} experts that cost most alone on the eval tokens",
            ["expert", "eval %", "calibration %"],
            rows,
            notes,
        )
    )
    result.data = {
        "precision": PRECISION.value,
        "spearman": agreement,
        **{
            name: {
                "corpus": texts[name][0],
                "tokens": len(texts[name][1]),
                "singles": [
                    [singles[(layer, index)] for index in range(ctx.shape[1])]
                    for layer in range(ctx.shape[0])
                ],
                "all_at_once": every,
            }
            for name, (singles, every) in measured.items()
        },
    }
    return result


def _percent(log_increase: float) -> float:
    return 100.0 * math.expm1(log_increase)
