"""`moeqos plan`, `moeqos frontier`, `moeqos whatif`: the planner from the command line (never torch).

The computation lives in `planner` (solve, frontier, whatif); these functions parse arguments, call it
and print a table (or JSON with `--json`), so remote variants can reuse the same printing. Bad input
raises InvalidArgument; `moeqos.cli.guard` turns errors into messages and exit codes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from moeqos.cli.client_cmds import add_connection_args
from moeqos.core.errors import InvalidArgument
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.planner.catalog import HARDWARE, MODELS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the plan, frontier and whatif commands."""
    plan = subparsers.add_parser("plan", help="best plan for a QoS target from a measured profile")
    _add_profile_source(plan)
    _add_target_args(plan)
    _add_choice_args(plan, budget_help="TIER=SIZE expert budget (e.g. cuda:0=24GiB); default: the profile's")
    plan.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="streams decoded together: the floor and the predicted tokens/s are per stream at N "
        "streams (default 1; above 1 the profile needs batched step timings)",
    )
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(func=cmd_plan)

    front = subparsers.add_parser("frontier", help="Pareto frontier of tokens/s vs perplexity from a profile")
    _add_profile_source(front)
    _add_frontier_args(front)
    _add_choice_args(front, budget_help="TIER=SIZE expert budget (e.g. cuda:0=24GiB); default: the profile's")
    front.add_argument("--json", action="store_true", help="print JSON")
    front.set_defaults(func=cmd_frontier)

    whatif = subparsers.add_parser(
        "whatif", help="plan for a described model and machine, no executor needed"
    )
    whatif.add_argument(
        "--model",
        default="smollm2-135m-moe8",
        help=f"built-in model: {', '.join(MODELS)} (default %(default)s)",
    )
    whatif.add_argument(
        "--hardware",
        default="cpu-2core",
        help=f"built-in hardware: {', '.join(HARDWARE)} (default %(default)s), or a JSON file "
        "(see --hardware-template)",
    )
    whatif.add_argument(
        "--hardware-template",
        action="store_true",
        help="print a hardware description JSON to edit and pass back with --hardware FILE.json",
    )
    whatif.add_argument("--skew", type=float, default=None, help="frequency skew of the analytic profile")
    whatif.add_argument(
        "--frontier", action="store_true", help="print the frontier (default without a target)"
    )
    whatif.add_argument(
        "--paper", action="store_true", help="compare the Mixtral-8x7B/A100 frontier with the paper"
    )
    _add_target_args(whatif)
    _add_frontier_args(whatif)
    _add_choice_args(
        whatif,
        budget_help="TIER=SIZE memory of a tier (e.g. cuda:0=24GiB); the device "
        "tier's expert budget is this less the dense weights and a reserve",
    )
    whatif.add_argument("--json", action="store_true", help="print JSON")
    whatif.set_defaults(func=cmd_whatif)


def _add_profile_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--profile", help="profile JSON written by an executor (`moeqos profile --json`)")
    source.add_argument(
        "--executor", metavar="ADDR", help="fetch the profile from a running executor (GetProfile)"
    )
    add_connection_args(parser)


def _add_target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-tps", type=float, help="throughput floor, decode tokens/s")
    ceiling = parser.add_mutually_exclusive_group()
    ceiling.add_argument("--max-ppl", type=float, help="absolute perplexity ceiling")
    ceiling.add_argument("--max-ppl-increase", type=float, help="ceiling as an increase over full precision")
    parser.add_argument(
        "--objective",
        choices=[o.value for o in Objective],
        help="what to optimise (default: speed under a ceiling, quality under a floor)",
    )


def _add_frontier_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=20, help="frontier points (default 20)")
    parser.add_argument("--plot", type=Path, help="write the frontier as a PNG to this file")


def _add_choice_args(parser: argparse.ArgumentParser, budget_help: str) -> None:
    parser.add_argument("--budget", action="append", default=[], metavar="TIER=SIZE", help=budget_help)
    parser.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="RULE",
        help="pattern=precision[@tier], first match wins (e.g. L0.E*=bf16@cuda:0)",
    )
    parser.add_argument("--precisions", help="comma-separated precisions the planner may use")
    parser.add_argument(
        "--no-offload",
        action="store_true",
        help="fit by precision only: never put an expert on the disk tier, whatever its budget",
    )


# ----- argument conversion ---------------------------------------------------------------------
def target_from_args(args: argparse.Namespace) -> QosTarget | None:
    """The QoS target the flags describe, or None when none is given."""
    if args.min_tps is None and args.max_ppl is None and args.max_ppl_increase is None and not args.objective:
        return None
    try:
        return QosTarget(
            args.min_tps,
            args.max_ppl,
            args.max_ppl_increase,
            Objective(args.objective) if args.objective else None,
        )
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


def pins_from_args(args: argparse.Namespace) -> tuple[PlacementRule, ...]:
    try:
        return tuple(PlacementRule.parse(text) for text in args.pin)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


def precisions_from_args(args: argparse.Namespace) -> frozenset[Precision] | None:
    if not args.precisions:
        return None
    try:
        return frozenset(Precision.parse(p) for p in args.precisions.split(",") if p.strip())
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


def tiers_from_args(args: argparse.Namespace, budgets: tuple[Any, ...]) -> frozenset[str] | None:
    """The tiers the planner may use: every budgeted tier but disk with --no-offload, else None (all)."""
    from moeqos.core.tier import DISK

    if not getattr(args, "no_offload", False):
        return None
    return frozenset(b.name for b in budgets if b.name != DISK)


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The profile named by --profile FILE, or fetched from the executor at --executor ADDR. The
    solving still happens here, in process: the planner core is stateless either way."""
    if not args.executor:
        return load_profile(args.profile)
    from moeqos.cli.client_cmds import executor_client

    with executor_client(args, args.executor) as executor:
        return executor.get_profile()


def load_profile(path: str) -> Profile:
    try:
        return Profile.from_json(Path(path).read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"cannot read profile {path}: {exc}") from exc


# ----- commands --------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    """Solve one target against a measured profile."""
    from moeqos.core.units import merge_budgets, parse_budget

    profile = profile_from_args(args)
    target = target_from_args(args)
    if target is None:
        raise InvalidArgument("give --min-tps, --max-ppl or --max-ppl-increase")
    budgets = merge_budgets(profile.tiers, [parse_budget(b) for b in args.budget])
    return solve_and_print(profile, target, budgets, args)


def cmd_frontier(args: argparse.Namespace) -> int:
    """The frontier of a measured profile."""
    from moeqos.core.units import merge_budgets, parse_budget

    profile = profile_from_args(args)
    budgets = merge_budgets(profile.tiers, [parse_budget(b) for b in args.budget])
    return frontier_and_print(
        profile, budgets, args, title=f"{profile.model.name} on {profile.hardware.device_name}"
    )


def cmd_whatif(args: argparse.Namespace) -> int:
    """Plan or frontier for an analytic profile; `--paper` prints the comparison with arXiv 2407.14417."""
    from moeqos.core.units import parse_budget
    from moeqos.planner.whatif import (
        DEFAULT_SKEW,
        hardware_named,
        hardware_template,
        model_named,
        whatif_profile,
    )

    if args.hardware_template:
        print(json.dumps(hardware_template(), indent=2))
        return 0
    if args.paper:
        return print_paper(args.json)
    model = model_named(args.model)
    hardware = hardware_named(args.hardware)
    capacities = {b.name: b.budget_bytes for b in (parse_budget(text) for text in args.budget)}
    profile = whatif_profile(model, hardware, capacities, DEFAULT_SKEW if args.skew is None else args.skew)
    target = target_from_args(args)
    if target is None or args.frontier:
        return frontier_and_print(
            profile, profile.tiers, args, title=f"{model.name} on {hardware.name} (what-if)"
        )
    return solve_and_print(profile, target, profile.tiers, args)


# ----- shared: compute and print ---------------------------------------------------------------
def solve_and_print(
    profile: Profile, target: QosTarget, budgets: tuple[Any, ...], args: argparse.Namespace
) -> int:
    from moeqos.planner.latency_model import LatencyModel
    from moeqos.planner.quality_model import QualityModel
    from moeqos.planner.report import fit_summary, format_fit, format_result
    from moeqos.planner.solver import PlanRequest, solve

    latency, quality = LatencyModel.fit(profile), QualityModel.fit(profile)
    request = PlanRequest(
        profile,
        target,
        budgets,
        pins_from_args(args),
        precisions_from_args(args),
        tiers_from_args(args, budgets),
        concurrency=getattr(args, "concurrency", 1),
    )
    result = solve(request, latency, quality)
    if args.json:
        doc = {"target": target.to_dict(), **result.to_dict(), "fit": fit_summary(latency, quality)}
        print(json.dumps(doc, indent=2))
    else:
        print(format_result(result, target.describe()))
        print()
        print(format_fit(latency, quality))
    return 0


def frontier_and_print(
    profile: Profile, budgets: tuple[Any, ...], args: argparse.Namespace, title: str
) -> int:
    from moeqos.planner.frontier import frontier
    from moeqos.planner.latency_model import LatencyModel
    from moeqos.planner.quality_model import QualityModel
    from moeqos.planner.report import fit_summary, format_fit, format_frontier

    latency, quality = LatencyModel.fit(profile), QualityModel.fit(profile)
    points = frontier(
        profile,
        budgets,
        args.points,
        pins_from_args(args),
        latency=latency,
        quality=quality,
        allowed_precisions=precisions_from_args(args),
        allowed_tiers=tiers_from_args(args, budgets),
    )
    if args.plot:
        from moeqos.planner.plot import plot_frontier

        plot_frontier(points, args.plot, title)
    if args.json:
        doc = {
            "reference_perplexity": quality.reference_perplexity,
            "points": [p.to_dict() for p in points],
            "plot": str(args.plot) if args.plot else None,
            "fit": fit_summary(latency, quality),
        }
        print(json.dumps(doc, indent=2))
    else:
        print(f"{title}: {len(points)} Pareto-optimal plans")
        print(format_frontier(points, quality.reference_perplexity))
        print()
        print(format_fit(latency, quality))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def print_paper(as_json: bool) -> int:
    from moeqos.planner.paper import EXPLANATION, paper_comparison
    from moeqos.planner.report import format_spans

    spans = paper_comparison()
    if as_json:
        rows = [
            {
                "scenario": s.scenario,
                "min_tokens_per_s": s.min_tokens_per_s,
                "max_tokens_per_s": s.max_tokens_per_s,
                "max_ppl_increase": s.max_ppl_increase,
            }
            for s in spans
        ]
        print(json.dumps({"spans": rows, "explanation": EXPLANATION}, indent=2))
    else:
        print(format_spans(spans))
        print()
        print(EXPLANATION)
    return 0
