"""Human-readable tables of planner results (computation lives elsewhere; these only format)."""

from __future__ import annotations

from collections.abc import Sequence

from moeqos.core.tier import TierBudget
from moeqos.core.units import format_bytes
from moeqos.planner.latency_model import LatencyModel
from moeqos.planner.paper import Span
from moeqos.planner.quality_model import QualityModel
from moeqos.planner.solver import PlanResult


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table; the first column left-aligned, the rest right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def format_result(result: PlanResult, target: str = "") -> str:
    """A plan result: predictions, the plan, bytes per tier against budgets, notes."""
    estimate = " (estimate)" if result.perplexity_is_estimate else ""
    lines = [f"target:     {target}"] if target else []
    lines += [
        f"predicted:  {result.predicted_tokens_per_s:.3f} tokens/s{_per_stream(result)}, perplexity "
        f"{result.predicted_perplexity:.4f}{estimate}",
        f"plan:       {result.plan.describe()}",
        f"spec:       {_short_spec(result.plan.to_spec())}",
        "",
        format_tiers(result.bytes_per_tier, result.budgets),
        "",
        f"solved in {result.solve_seconds * 1e3:.1f} ms; {result.notes}",
    ]
    return "\n".join(lines)


def _per_stream(result: PlanResult) -> str:
    """How the tokens/s read at more than one stream: per stream, and all streams together."""
    if result.concurrency == 1:
        return ""
    return (
        f" per stream at {result.concurrency} streams "
        f"({result.predicted_aggregate_tokens_per_s:.3f} tokens/s together)"
    )


def _short_spec(spec: str, limit: int = 160) -> str:
    if len(spec) <= limit:
        return spec
    return f"{spec[:limit]}... ({spec.count(',') + 1} rules; --json prints the whole plan)"


def format_tiers(used: dict[str, int], budgets: tuple[TierBudget, ...]) -> str:
    names = [b.name for b in budgets] + [t for t in used if t not in {b.name for b in budgets}]
    limit = {b.name: b.budget_bytes for b in budgets}
    rows = [(n, format_bytes(used.get(n, 0)), format_bytes(limit[n]) if n in limit else "-") for n in names]
    return table(("tier", "experts", "budget"), rows)


def format_frontier(results: list[PlanResult], reference_perplexity: float | None = None) -> str:
    """One row per frontier point: tokens/s, perplexity (and its increase), bytes per tier, plan."""
    tiers = sorted({t for r in results for t in r.bytes_per_tier})
    header = ["#", "tokens/s", "perplexity", *(["+ppl"] if reference_perplexity else []), *tiers, "plan"]
    rows = []
    for i, r in enumerate(results):
        increase = [f"{r.predicted_perplexity - reference_perplexity:+.4f}"] if reference_perplexity else []
        per_tier = [format_bytes(r.bytes_per_tier.get(t, 0)) for t in tiers]
        rows.append(
            [
                i,
                f"{r.predicted_tokens_per_s:.3f}",
                f"{r.predicted_perplexity:.4f}",
                *increase,
                *per_tier,
                r.plan.describe().split(": ", 1)[-1],
            ]
        )
    footer = "perplexity is an estimate" if any(r.perplexity_is_estimate for r in results) else ""
    notes = (
        f"\n{footer}; {results[0].notes}"
        if results and footer
        else (f"\n{results[0].notes}" if results else "")
    )
    return table(header, rows) + notes


def format_spans(spans: Sequence[Span]) -> str:
    """The paper comparison as a table (moeqos.planner.paper)."""
    rows = [
        (s.scenario, f"{s.min_tokens_per_s:.2f}", f"{s.max_tokens_per_s:.2f}", f"{s.max_ppl_increase:.2f}")
        for s in spans
    ]
    return table(("Mixtral-8x7B, A100 80GB, experts bf16/int4", "min tok/s", "max tok/s", "max +ppl"), rows)


def format_fit(latency: LatencyModel, quality: QualityModel) -> str:
    """The fitted cost curves with their residuals, and the quality model's basis and holdout error."""
    curves = [(tier, c) for tier, c in latency.curves.items()]
    if latency.load_curve is not None:
        curves.append(("disk load", latency.load_curve))
    rows = [
        (
            name,
            f"{c.overhead_s * 1e6:.1f}",
            f"{c.bandwidth_bps / 1e9:.2f}",
            len(c.points),
            f"{c.max_relative_residual:.1%}",
        )
        for name, c in curves
    ]
    holdout = (
        f"leave-one-out error of the perplexity increase {quality.holdout_error:.1%} over "
        f"{quality.holdout_points} plans"
        + ("" if quality.trusted else " (above the trust threshold: predictions are estimates)")
        if quality.holdout_error is not None
        else "no holdout error (too few measured plans)"
    )
    return "\n".join(
        [
            f"fitted on {latency.identity.describe()}",
            table(("curve", "overhead us", "bandwidth GB/s", "points", "max |residual|"), rows),
            f"quality: {quality.basis}; {holdout}",
            f"reference perplexity {quality.reference_perplexity:.4g} ({quality.reference_source}); "
            f"predicted perplexities are on {quality.corpus or 'the reference corpus'}",
        ]
    )


def fit_summary(latency: LatencyModel, quality: QualityModel) -> dict[str, object]:
    """The JSON form of `format_fit`."""
    return {
        "identity": latency.identity.to_dict(),
        "curves": {
            t: {
                "overhead_s": c.overhead_s,
                "bandwidth_bps": c.bandwidth_bps,
                "residuals_s": list(c.residuals_s),
            }
            for t, c in latency.curves.items()
        },
        "residuals": {k: list(v) for k, v in latency.residuals.items()},
        "quality_basis": quality.basis,
        "quality_holdout_error": quality.holdout_error,
        "quality_is_estimate": quality.is_estimate,
        "quality_corpus": quality.corpus,
        "reference_perplexity": quality.reference_perplexity,
        "reference_source": quality.reference_source,
    }
