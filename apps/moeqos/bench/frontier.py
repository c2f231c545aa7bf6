"""Section `frontier`: the paper's central experiment, on the default model and Penn Treebank.

Profile the executor (calibration ptb:train, fitting plans' perplexity on ptb:test), fit both cost
models, compute the planner's frontier, then measure plans spread along it that were not used for
fitting: decode tokens/s (median of repeats) and ptb:test perplexity. The cost models are judged by
their mean absolute percentage error on those held-out plans. Beside the profile's prediction of each
plan's speed, the closed loop's (moeqos.bench.live_prediction): the profile recalibrated on the decode
steps of the plans measured just before it, the all-bf16 plan first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from moeqos.bench import plots
from moeqos.bench.live_prediction import LIVE_PLANS, live_tokens_per_s
from moeqos.bench.metrics import mape, percent_error, ratio, short_description, spread_indices
from moeqos.bench.report import Goal, SectionResult, table

SPEED_ERROR_GOAL = 10.0
PERPLEXITY_ERROR_GOAL = 5.0
MIN_PLANS = 8


@dataclass(frozen=True)
class Point:
    """One held-out plan: predicted and measured speed and perplexity."""

    spec: str
    description: str
    source: str
    """`frontier`, `frontier end` or `bf16/int4 dial` (see `held_out`)."""
    predicted_tokens_per_s: float
    measured_tokens_per_s: float
    live_predicted_tokens_per_s: float
    """From the profile recalibrated on the plans measured before this one (`live_tokens_per_s`)."""
    predicted_perplexity: float
    measured_perplexity: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def held_out(ctx: Any) -> list[tuple[Any, str]]:
    """(PlanResult, source) for frontier points spread evenly in log tokens/s, fitting plans excluded.

    When the frontier has fewer such plans than asked (on a machine where one precision is both the
    fastest and nearly the most accurate it collapses to a point or two), the rest are spread along
    the bf16/int4 dial (`ctx.dial`) so the cost models are still judged on held-out plans.
    """
    taken = {p.to_spec() for p in ctx.fitting_plans}
    picked: list[tuple[Any, str]] = []
    for source, points in (("frontier", ctx.frontier), ("bf16/int4 dial", ctx.dial)):
        wanted = ctx.settings.measured_plans - len(picked)
        if wanted <= 0:
            break
        excluded = {i for i, r in enumerate(points) if r.plan.to_spec() in taken}
        chosen = [
            points[i] for i in spread_indices([r.predicted_tokens_per_s for r in points], wanted, excluded)
        ]
        picked += [(r, source) for r in chosen]
        taken |= {r.plan.to_spec() for r in chosen}
    return picked


def _ends(points: list[Any]) -> list[Any]:
    """The slowest and the fastest frontier point (one when the frontier is a single plan)."""
    return [points[0]] if len(points) == 1 else [points[0], points[-1]]


def measure(ctx: Any, result: Any, source: str, history: list[tuple[Any, Any]]) -> Point:
    """Measure one planned plan on the executor, its live prediction from the other plans measured
    before it (`history`, (plan, Speed) in measurement order, to which this plan's speed is appended;
    a plan measured earlier, such as an end that is the all-bf16 plan, is not predicted from its own
    steps)."""
    spec = result.plan.to_spec()
    others = [(plan, speed) for plan, speed in history if plan.to_spec() != spec]
    live = live_tokens_per_s(ctx.profile, result.plan, others)
    speed = ctx.decode_speed(result.plan)
    history.append((result.plan, speed))
    evaluation = ctx.perplexity(result.plan)
    return Point(
        result.plan.to_spec(),
        _label(ctx, result.plan),
        source,
        result.predicted_tokens_per_s,
        speed.tokens_per_s,
        live,
        result.predicted_perplexity,
        float(evaluation.perplexity),
    )


def _label(ctx: Any, plan: Any) -> str:
    """The rule text of a fitting plan, else the plan's counts (full specs run to hundreds of chars)."""
    return str(ctx.fitting_labels.get(plan.to_spec(), short_description(plan)))


def run(ctx: Any) -> SectionResult:
    """Profile, fit, solve the frontier, measure the held-out plans and both ends, report errors and range."""
    planned = held_out(ctx)  # the profile and the frontier first: the measurements follow back to back
    history = [(ctx.full_precision, ctx.decode_speed(ctx.full_precision))]
    points = [measure(ctx, r, source, history) for r, source in planned]
    held = {p.spec: p for p in points}  # an end measured already as a held-out plan keeps that point
    ends = [
        replace(held[r.plan.to_spec()], source="frontier end")
        if r.plan.to_spec() in held
        else measure(ctx, r, "frontier end", history)
        for r in _ends(ctx.frontier)
    ]
    reference = float(ctx.perplexity(ctx.full_precision).perplexity)
    result = SectionResult("frontier")
    result.tables += [_plan_table(ctx, points, ends), _profile_table(ctx)]
    result.goals += _goals(points)
    if points:
        result.tables += [_live_table(points), _corpus_table(ctx, points)]
    result.data = _data(ctx, points, ends, reference)
    result.tables.insert(1, _range_table(result.data["range"]))
    result.plots += _plots(ctx, points, ends)
    return result


def _plan_table(ctx: Any, points: list[Point], ends: list[Point]) -> Any:
    fitting = {p.to_spec() for p in ctx.fitting_plans}
    labelled = [(p, f"held out ({p.source})") for p in points]
    labelled += [(p, "end, fitting" if p.spec in fitting else "end") for p in ends]
    rows = [
        [
            p.description,
            role,
            p.predicted_tokens_per_s,
            p.measured_tokens_per_s,
            percent_error(p.predicted_tokens_per_s, p.measured_tokens_per_s),
            p.live_predicted_tokens_per_s,
            percent_error(p.live_predicted_tokens_per_s, p.measured_tokens_per_s),
            p.predicted_perplexity,
            p.measured_perplexity,
            percent_error(p.predicted_perplexity, p.measured_perplexity),
        ]
        for p, role in labelled
    ]
    s = ctx.settings
    notes = [
        f"{len(points)} held-out plans ({sum(p.source == 'frontier' for p in points)} of the "
        f"{len(ctx.frontier)}-point frontier, the rest from the bf16/int4 dial; fitting plans excluded) "
        "and the frontier's ends (for the range; in the error only if held out)",
        f"tok/s: median of {s.repeats} greedy runs of {s.decode_tokens} tokens, decode rate after the "
        "first token",
        f"live pred: from the profile recalibrated on the {LIVE_PLANS} other plans measured just before "
        "(the closed loop's prediction; see the MAPE table by profile)",
        f"perplexity: {len(ctx.test_ids)} ptb:test tokens, context {s.context_length}; the quality model "
        "is fitted to the fitting plans on the same tokens",
    ]
    columns = [
        "plan",
        "role",
        "pred tok/s",
        "meas tok/s",
        "err %",
        "live pred",
        "err %",
        "pred ppl",
        "meas ppl",
        "err %",
    ]
    return table("frontier: held-out plans, predicted vs measured", columns, rows, notes)


def _range_table(span: dict[str, Any]) -> Any:
    rows = [
        [
            "decode tok/s",
            span["slowest_tokens_per_s"],
            span["fastest_tokens_per_s"],
            ratio(span["fastest_tokens_per_s"], span["slowest_tokens_per_s"]),
        ],
        [
            "ptb:test perplexity",
            span["perplexity_full_precision"],
            span["perplexity_fastest"],
            ratio(span["perplexity_fastest"], span["perplexity_full_precision"]),
        ],
    ]
    notes = [
        f"fastest plan: {span['fastest_spec']}; perplexity from all-bf16 to the fastest measured plan",
        "every expert in RAM: the range is bounded by the weights a token reads at the lightest precision "
        "(dense layers included); the dial with offloading, and its range goal, are in the offload section",
    ]
    return table("frontier: range covered", ["quantity", "slow end", "fast end", "ratio"], rows, notes)


def _profile_table(ctx: Any) -> Any:
    profile, quality = ctx.profile, ctx.models[1]
    rows = [
        [ctx.fitting_labels.get(q.plan_spec, q.plan_spec), q.perplexity, q.tokens]
        for q in profile.quality_points
    ]
    notes = [
        f"calibration: {profile.calibration_corpus}, {profile.calibration_tokens} tokens; "
        f"fixed {profile.fixed_seconds * 1e3:.2f} ms/token outside the experts",
        f"quality model: {quality.basis}",
        "profile stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in ctx.profile_stages.items()),
        f"frontier: {len(ctx.frontier)} points in {ctx.frontier_seconds:.2f} s; executor load "
        f"{ctx.load_seconds:.1f} s",
    ]
    return table("frontier: fitting plans (ptb:test)", ["plan", "perplexity", "tokens"], rows, notes)


def _goals(points: list[Point]) -> list[Goal]:
    """Error goals over the held-out `points` (the range goal is the `offload` section's)."""
    goals = [Goal("held-out plans measured", f">= {MIN_PLANS}", len(points), len(points) >= MIN_PLANS)]
    if not points:
        return goals
    speed_error = mape([p.predicted_tokens_per_s for p in points], [p.measured_tokens_per_s for p in points])
    ppl_error = mape([p.predicted_perplexity for p in points], [p.measured_perplexity for p in points])
    return [
        *goals,
        Goal("throughput MAPE %", f"< {SPEED_ERROR_GOAL:g}", speed_error, speed_error < SPEED_ERROR_GOAL),
        Goal(
            "perplexity MAPE %", f"< {PERPLEXITY_ERROR_GOAL:g}", ppl_error, ppl_error < PERPLEXITY_ERROR_GOAL
        ),
    ]


def _live_table(points: list[Point]) -> Any:
    """The held-out plans' throughput error from the profile as measured and as the closed loop
    recalibrates it."""
    measured = [p.measured_tokens_per_s for p in points]
    rows = [
        ["profile (the goal's)", mape([p.predicted_tokens_per_s for p in points], measured)],
        [
            f"profile recalibrated on the {LIVE_PLANS} plans measured before",
            mape([p.live_predicted_tokens_per_s for p in points], measured),
        ],
    ]
    notes = [
        "recalibrated as the executor's QoS loop does (fixed and call scales fitted to decode steps) on "
        "other plans' steps only; the all-bf16 plan is measured first",
        "the gap between the two rows is the host's drift since the profile, not the model's shape",
    ]
    return table(
        "frontier: throughput MAPE % on held-out plans, by profile", ["prediction", "MAPE %"], rows, notes
    )


def _corpus_table(ctx: Any, points: list[Point]) -> Any:
    """The held-out plans' perplexity error with the quality model fitted on ptb:test (the goal) and on
    ptb:valid (the same fitting plans, other text): how much of the error is a change of text."""
    from moeqos.core.plan import parse_plan

    measured = [p.measured_perplexity for p in points]
    layers, experts = ctx.shape
    plans = [parse_plan(p.spec, layers, experts, ctx.device) for p in points]
    valid = [ctx.valid_quality.predict_perplexity(plan) for plan in plans]
    rows = [
        ["ptb:test (the held-out plans' text)", mape([p.predicted_perplexity for p in points], measured)],
        [f"ptb:valid ({ctx.settings.fit_tokens} tokens)", mape(valid, measured)],
    ]
    notes = ["measured on ptb:test either way; the frontier and its predictions use the ptb:test fit"]
    return table(
        "frontier: perplexity MAPE % on held-out plans, by fitting text", ["fitted on", "MAPE %"], rows, notes
    )


def _data(ctx: Any, points: list[Point], ends: list[Point], reference: float) -> dict[str, Any]:
    measured = [*points, *ends]
    slowest = min(measured, key=lambda p: p.measured_tokens_per_s)
    fastest = max(measured, key=lambda p: p.measured_tokens_per_s)
    return {
        "profile": ctx.profile.to_dict(),
        "frontier": [r.to_dict() for r in ctx.frontier],
        "dial": [r.to_dict() for r in ctx.dial] if "dial" in vars(ctx) else [],  # only when consulted
        "frontier_seconds": ctx.frontier_seconds,
        "profile_stage_seconds": dict(ctx.profile_stages),
        "held_out": [p.to_dict() for p in points],
        "ends": [p.to_dict() for p in ends],
        "full_precision": {
            "perplexity": reference,
            "tokens_per_s": ctx.decode_speed(ctx.full_precision).tokens_per_s,
        },
        "range": {
            "slowest_tokens_per_s": slowest.measured_tokens_per_s,
            "fastest_tokens_per_s": fastest.measured_tokens_per_s,
            "perplexity_full_precision": reference,
            "perplexity_fastest": fastest.measured_perplexity,
            "fastest_spec": fastest.spec,
        },
    }


def _plots(ctx: Any, points: list[Point], ends: list[Point]) -> list[str]:
    """Predicted vs measured for the held-out plans; the frontier with every measured plan over it."""
    measured = [*points, *ends]
    frontier = (
        [r.predicted_tokens_per_s for r in ctx.frontier],
        [r.predicted_perplexity for r in ctx.frontier],
    )
    over = ([p.measured_tokens_per_s for p in measured], [p.measured_perplexity for p in measured])
    paths = [plots.frontier(ctx.out_dir / "frontier.png", frontier, over, f"{ctx.model_dir.name}: frontier")]
    if points:
        speeds = ([p.predicted_tokens_per_s for p in points], [p.measured_tokens_per_s for p in points])
        ppls = ([p.predicted_perplexity for p in points], [p.measured_perplexity for p in points])
        title = f"{ctx.model_dir.name}: cost models on held-out frontier plans"
        paths.append(
            plots.predicted_vs_measured(
                ctx.out_dir / "frontier_predicted_vs_measured.png", speeds, ppls, title
            )
        )
    return [str(p) for p in paths]
