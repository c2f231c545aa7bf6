"""What the demo does once the services are up: pick two QoS targets from the frontier, deploy them
through the planner, stream a generation from each executor, measure perplexity and speed, and plot.

Talks to the services only through the clients in `client/`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moeqos.client import ExecutorClient, PlannerClient
from moeqos.core.corpora import FITTING_CORPUS
from moeqos.core.qos import QosTarget
from moeqos.core.service_types import DeployOutcome, DeploySpec, PlanOutcome, Sampling
from moeqos.demo.hold import Held, HoldSettings, hold_floor
from moeqos.demo.plot import Deployed, Point, plot_frontier
from moeqos.demo.profiles import measure_missing_profiles
from moeqos.demo.variants import wait_for_variants_ahead

Say = Callable[[str], None]
LONG_CALL_S = 900.0
"""Deadline for calls that may take minutes (Deploy, a perplexity evaluation); the profiles are measured
before any of them (moeqos.demo.profiles), with a deadline on progress instead."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo asks of the two executors."""

    prompt: str = "The stock market today"
    max_tokens: int = 40
    eval_corpus: str = FITTING_CORPUS
    """Where the measured perplexity is taken: the corpus the executors' profiles measure their quality
    plans on, so the planner's predicted perplexity and the measured one are on one scale."""
    eval_tokens: int = 1024
    """Tokens of `eval_corpus` the measured perplexity is taken over (bounded: this is a demo)."""
    max_perplexity_increase: float | None = None
    """The speed target's ceiling over full precision; None: 15% of the full-precision perplexity."""
    min_tokens_per_s: float | None = None
    """The quality target's floor; None: 15% of the way from the most accurate plan's predicted speed
    to the fastest plan's."""
    frontier_points: int = 12
    warmup_tokens: int = 48
    """Tokens each executor decodes just before its frontier is asked for, so that the profile the planner
    reads is calibrated to the speed the machine gives now (`warm_up`)."""
    profile_stall_s: float = 600.0
    """An executor measuring its profile that reports no progress for this long fails the demo (the
    measurement itself has no deadline: minutes at one thread on a slow CPU)."""
    variants_wait_s: float = 300.0
    """How long the demo waits for the executors' variants built ahead before it measures any rate
    (moeqos.demo.variants); past it, it goes on and says so."""
    hold: HoldSettings = field(default_factory=HoldSettings)
    """How long a floor is given to hold before it is judged (moeqos.demo.hold)."""


@dataclass(frozen=True)
class ExecutorResult:
    """One executor's part of the demo."""

    name: str
    address: str
    target: str
    plan: str
    plan_spec: str
    predicted_tokens_per_s: float
    predicted_perplexity: float
    generated_text: str
    measured_tokens_per_s: float
    """A floor's: the executor's own window once its loop had its chance (`held`); otherwise the
    streamed generation's."""
    measured_perplexity: float
    eval_tokens: int
    target_met: bool
    """Whether the measured numbers meet the target (see `meets`)."""
    generation_tokens_per_s: float
    """The one streamed generation right after Deploy."""
    held: Held | None = None
    """How a floor stood after the demo waited for the executor's loop (None: no floor, or an
    executor without a QoS status); the perplexity is measured on its final plan."""


def meets(target: QosTarget, tokens_per_s: float, perplexity: float, reference_perplexity: float) -> bool:
    """Whether measured decode tokens/s and perplexity meet `target`'s bounds; a ceiling relative to
    full precision is placed on `reference_perplexity` (the frontier's most accurate plan, predicted)."""
    floor = target.min_tokens_per_s
    ceiling = target.perplexity_ceiling(reference_perplexity)
    return (floor is None or tokens_per_s >= floor) and (ceiling is None or perplexity <= ceiling)


def speed_target(frontier: list[PlanOutcome], settings: DemoSettings) -> QosTarget:
    """A perplexity ceiling generous enough for 4- and 3-bit experts, placed on this executor's own
    frontier (15% over its most accurate plan) unless the settings fix it."""
    increase = settings.max_perplexity_increase
    if increase is None:
        increase = _round_down(0.15 * min(p.prediction.perplexity for p in frontier))
    return QosTarget(max_perplexity_increase=increase)


def quality_target(frontier: list[PlanOutcome], settings: DemoSettings) -> QosTarget:
    """A throughput floor modest enough to keep most experts at 16 bits: 15% of the way from this
    executor's most accurate plan's predicted speed to its fastest plan's, unless the settings fix it."""
    floor = settings.min_tokens_per_s
    if floor is None:
        best = min(frontier, key=lambda p: p.prediction.perplexity).prediction.tokens_per_s
        fastest = max(p.prediction.tokens_per_s for p in frontier)
        floor = _round_down(best + 0.15 * (fastest - best))
    return QosTarget(min_tokens_per_s=floor)


def _round_down(value: float) -> float:
    """Two decimals, rounded down: a bound read off the frontier must stay reachable."""
    return math.floor(value * 100) / 100


def stream_generation(name: str, address: str, settings: DemoSettings) -> tuple[str, float]:
    """Print the tokens of one generation as they arrive; return the text and measured decode tokens/s."""
    pieces: list[str] = []
    tokens_per_s = 0.0
    sys.stdout.write(f"    {name} > {settings.prompt}")
    with ExecutorClient(address) as client:
        for event in client.generate(
            settings.prompt, Sampling(max_tokens=settings.max_tokens), timeout=LONG_CALL_S
        ):
            pieces.append(event.text)
            sys.stdout.write(event.text)
            sys.stdout.flush()
            if event.stats is not None:
                tokens_per_s = event.stats.tokens_per_s
    sys.stdout.write("\n")
    return "".join(pieces), tokens_per_s


def run_scenario(
    planner: str, executors: Mapping[str, str], settings: DemoSettings, out_dir: Path, say: Say
) -> dict[str, Any]:
    """The demo proper, against running services: the first executor gets the speed target, the second
    the quality target. Returns the report (the caller writes it to demo.json)."""
    pair = list(executors.items())[:2]
    (speed_name, speed_addr), (quality_name, quality_addr) = pair
    measure_missing_profiles(dict(pair), say, settings.profile_stall_s)
    wait_for_variants_ahead(dict(pair), say, settings.variants_wait_s)
    with PlannerClient(planner) as client:
        frontiers = {name: _frontier(client, name, address, settings, say) for name, address in pair}
        speed = speed_target(frontiers[speed_name], settings)
        quality = quality_target(frontiers[quality_name], settings)
        say(f"deploying  {speed_name}: {speed.describe()}  |  {quality_name}: {quality.describe()}")
        outcomes = client.deploy(
            [DeploySpec(speed_addr, speed), DeploySpec(quality_addr, quality)], timeout=LONG_CALL_S
        )
    targets = ((speed_name, speed), (quality_name, quality))
    results = [
        _exercise(name, target, outcome, settings, say, _reference(frontiers[name]))
        for (name, target), outcome in zip(targets, outcomes, strict=True)
    ]
    _print_table(results, settings)
    plot = _plot(frontiers, results, out_dir / "frontier.png")
    say(f"frontier plot written to {plot}")
    return {
        "settings": asdict(settings),
        "executors": [asdict(r) for r in results],
        "plot": str(plot),
        "frontiers": {name: [_point(p) for p in points] for name, points in frontiers.items()},
    }


def warm_up(address: str, settings: DemoSettings) -> float:
    """Decode `settings.warmup_tokens` on the executor at `address` and return its tokens/s.

    An executor's QoS loop fits its live calibration to the decode steps of the last few seconds, and
    GetProfile, which the planner reads, answers with the profile under it: after this, the frontier and
    the targets read off it are the machine's as it runs now (another process busy on a core included),
    not as it ran when the profile was measured."""
    with ExecutorClient(address) as client:
        completion = client.complete(
            settings.prompt, Sampling(max_tokens=settings.warmup_tokens), timeout=LONG_CALL_S
        )
    return completion.stats.tokens_per_s


def _frontier(
    client: PlannerClient, name: str, address: str, settings: DemoSettings, say: Say
) -> list[PlanOutcome]:
    rate = warm_up(address, settings)
    say(f"{name}: a {settings.warmup_tokens}-token warm-up decoded at {rate:.1f} tok/s")
    say(f"asking the planner for {name}'s frontier (from its profile as calibrated by that warm-up)")
    frontier = client.frontier(executor=address, points=settings.frontier_points, timeout=LONG_CALL_S)
    say(f"{name}: {len(frontier)} plans on the frontier, {_span(frontier)}")
    return frontier


def _reference(frontier: list[PlanOutcome]) -> float:
    return min(p.prediction.perplexity for p in frontier)


def _exercise(
    name: str, target: QosTarget, outcome: DeployOutcome, settings: DemoSettings, say: Say, reference: float
) -> ExecutorResult:
    address = outcome.executor_address
    say(
        f"{name} runs {outcome.plan.describe()} (switched {outcome.report.experts_changed} experts "
        f"in {outcome.report.seconds:.1f}s); streaming a generation:"
    )
    text, generation_rate = stream_generation(name, address, settings)
    tokens_per_s, held = generation_rate, None
    if target.min_tokens_per_s is not None:
        say(f"{name}: decoding up to {settings.hold.hold_s:g}s while its QoS loop holds the floor")
        held = hold_floor(address, target.min_tokens_per_s, settings.hold, settings.prompt)
        if held is not None:
            say(f"{name}: {_held_line(held)}")
            tokens_per_s = held.measured_tokens_per_s or 0.0
    say(f"{name}: measuring perplexity on {settings.eval_corpus} ({settings.eval_tokens} tokens)")
    start = time.monotonic()
    with ExecutorClient(address) as client:
        evaluation = client.evaluate(settings.eval_corpus, settings.eval_tokens, timeout=LONG_CALL_S)
    say(f"{name}: perplexity {evaluation.perplexity:.2f} ({time.monotonic() - start:.0f}s)")
    return ExecutorResult(
        name=name,
        address=address,
        target=target.describe(),
        plan=outcome.plan.describe(),
        plan_spec=outcome.plan.to_spec(),
        predicted_tokens_per_s=outcome.prediction.tokens_per_s,
        predicted_perplexity=outcome.prediction.perplexity,
        generated_text=text,
        measured_tokens_per_s=tokens_per_s,
        measured_perplexity=evaluation.perplexity,
        eval_tokens=evaluation.tokens,
        target_met=meets(target, tokens_per_s, evaluation.perplexity, reference),
        generation_tokens_per_s=generation_rate,
        held=held,
    )


def _held_line(held: Held) -> str:
    measured = "too few tokens" if held.measured_tokens_per_s is None else f"{held.measured_tokens_per_s:.2f}"
    loop = "loop on" if held.loop else "open loop"
    switches = "".join(f", {s:.1f}s" for s in held.switch_seconds)
    ahead = f"; variants built ahead: {held.variants_ahead}" if held.variants_ahead else ""
    return (
        f"{measured} tok/s over its own {held.window_s:g}s window vs floor {held.floor_tokens_per_s:g} after waiting "
        f"{held.waited_s:.0f}s ({loop}, {held.plan_changes} plan changes{switches}, state {held.state}){ahead}"
    )


def _span(frontier: list[PlanOutcome]) -> str:
    speeds = [p.prediction.tokens_per_s for p in frontier]
    ppls = [p.prediction.perplexity for p in frontier]
    return (
        f"{min(speeds):.1f}-{max(speeds):.1f} tok/s, perplexity {min(ppls):.2f}-{max(ppls):.2f} (predicted)"
    )


def _point(outcome: PlanOutcome) -> dict[str, Any]:
    p = outcome.prediction
    return {"plan": outcome.plan.to_spec(), "tokens_per_s": p.tokens_per_s, "perplexity": p.perplexity}


def _print_table(results: list[ExecutorResult], settings: DemoSettings) -> None:
    columns = ("tok/s pred", "tok/s meas", "ppl pred", "ppl meas", "target")
    header = f"{'executor':<12} {'target':<34} " + " ".join(f"{c:>10}" for c in columns)
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        print(
            f"{r.name:<12} {r.target:<34} {r.predicted_tokens_per_s:>10.2f} {r.measured_tokens_per_s:>10.2f} "
            f"{r.predicted_perplexity:>10.2f} {r.measured_perplexity:>10.2f} "
            f"{'met' if r.target_met else 'MISSED':>10}"
        )
    print(
        f"measured: tok/s of the streamed generation (decode), or for a floor the executor's own window "
        f"once its QoS loop had its chance (below); perplexity on {settings.eval_corpus} "
        f"({results[0].eval_tokens} tokens); predicted: the planner at Deploy, from the executor's profile "
        f"(perplexity on {settings.eval_corpus} too); target: the measured numbers against it"
    )
    for r in results:
        print(f"  {r.name}: {r.plan}\n    plan spec: {r.plan_spec}")
        if r.held is not None:
            print(
                f"    floor: {_held_line(r.held)}; one generation after Deploy: {r.generation_tokens_per_s:.2f}"
            )
            if r.held.final_plan_spec != r.plan_spec:
                print(f"    plan after the loop (perplexity measured on it): {r.held.final_plan_spec}")
    print()


def _plot(frontiers: Mapping[str, list[PlanOutcome]], results: list[ExecutorResult], path: Path) -> Path:
    lines = {
        name: [Point(p.prediction.tokens_per_s, p.prediction.perplexity) for p in points]
        for name, points in frontiers.items()
    }
    deployed = [
        Deployed(
            r.name,
            Point(r.predicted_tokens_per_s, r.predicted_perplexity),
            Point(r.measured_tokens_per_s, r.measured_perplexity),
        )
        for r in results
    ]
    return plot_frontier(lines, deployed, path, "moeqos demo: each executor's frontier and deployed plan")
