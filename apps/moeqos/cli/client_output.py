"""How the client commands print their results: tables and streamed text for people, JSON for programs."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from moeqos.client.executor import MeasureEvent
from moeqos.core.plan import Plan
from moeqos.core.profile import Profile
from moeqos.core.service_types import (
    BudgetOutcome,
    DeployOutcome,
    ExecutorInfo,
    GenerationEvent,
    QosStatus,
    ReplanState,
    SwitchReport,
)
from moeqos.core.units import format_bytes


def _json(data: Any) -> str:
    return json.dumps(data, default=str)


def stream(events: Iterator[GenerationEvent], as_json: bool) -> int:
    """Print text as it arrives (JSON lines with `as_json`); the stats go last (to stderr as text)."""
    for event in events:
        if as_json:
            print(_json(dataclasses.asdict(event)), flush=True)
            continue
        print(event.text, end="", flush=True)
        if event.stats is not None:
            s = event.stats
            print(
                f"\n[{s.generated_tokens} tokens, {s.tokens_per_s:.1f} tok/s, first token {s.time_to_first_token_s:.3f}s, "
                f"{s.finish_reason}; plan {s.plan_spec}]",
                file=sys.stderr,
            )
    return 0


def deployed(outcomes: list[DeployOutcome], as_json: bool) -> int:
    if as_json:
        print(_json([_outcome_dict(o) for o in outcomes]))
        return 0
    print(f"{'executor':<22} {'tok/s':>9} {'streams':>7} {'ppl':>9} {'changed':>8} {'switch s':>9}  plan")
    for o in outcomes:
        p = o.prediction
        print(
            f"{o.executor_address:<22} {p.tokens_per_s:>9.2f} {p.concurrency:>7} {p.perplexity:>9.3f} "
            f"{o.report.experts_changed:>8} {o.report.seconds:>9.3f}  {o.plan.describe()}"
        )
    return 0


def _outcome_dict(o: DeployOutcome) -> dict[str, Any]:
    return {
        "executor": o.executor_address,
        "plan": o.plan.to_spec(),
        "prediction": {
            **dataclasses.asdict(o.prediction),
            "aggregate_tokens_per_s": o.prediction.aggregate_tokens_per_s,
        },
        "report": dataclasses.asdict(o.report),
    }


def status(infos: list[tuple[str, ExecutorInfo]], as_json: bool) -> int:
    """One row per executor: model, device, tier use against budget, load, standing target, plan."""
    if as_json:
        print(_json([_info_dict(address, info) for address, info in infos]))
        return 0
    rows = [("executor", "address", "model", "device", "tiers used/budget", "run/queue", "target", "plan")]
    for address, info in infos:
        tiers = " ".join(
            f"{t.name}:{format_bytes(t.used_bytes)}/{format_bytes(t.budget_bytes)}" for t in info.tiers
        )
        target = info.standing_target.describe() if info.standing_target else "-"
        load = f"{info.active_generations}/{info.queued_generations}"
        plan = info.plan.to_spec()
        rows.append((info.name, address, info.model.name, info.hardware.device, tiers, load, target, plan))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    for address, info in infos:
        if info.replan_state is not ReplanState.IDLE:
            state = (
                f"{info.replan_state.value}: {info.replan_detail}"
                if info.replan_detail
                else info.replan_state.value
            )
            print(f"{info.name} @ {address}: re-plan {state} (planner {info.planner_address})")
        if info.qos is not None and info.qos.floor_tokens_per_s is not None:
            print(f"{info.name} @ {address}: {qos_line(info.qos)}")
        if info.variants_ahead:
            print(f"{info.name} @ {address}: variants built ahead: {info.variants_ahead}")
    return 0


def qos_line(qos: QosStatus) -> str:
    """The floor as held: `met: floor 10 tok/s, predicted 12.1, measured 11.4 over 3s (loop on; ...)`."""

    def rate(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "-"

    return (
        f"{qos.state.value}: floor {qos.floor_tokens_per_s:g} tok/s, predicted "
        f"{rate(qos.predicted_tokens_per_s)}, measured {rate(qos.measured_tokens_per_s)} over "
        f"{qos.window_seconds:g}s (loop {'on' if qos.loop else 'off'}; profile {qos.calibration}; "
        f"{qos.last_decision})"
    )


def _info_dict(address: str, info: ExecutorInfo) -> dict[str, Any]:
    return {
        "address": address,
        "name": info.name,
        "model": dataclasses.asdict(info.model),
        "device": info.hardware.device,
        "plan": info.plan.to_spec(),
        "plan_applied_at": info.plan_applied_at.isoformat() if info.plan_applied_at else None,
        "standing_target": info.standing_target.to_dict() if info.standing_target else None,
        "planner_address": info.planner_address,
        "replan_state": info.replan_state.value,
        "replan_detail": info.replan_detail,
        "qos": _qos_dict(info.qos) if info.qos is not None else None,
        "variants_ahead": info.variants_ahead,
        "tiers": [t.to_dict() for t in info.tiers],
        "dense": [
            {"element": d.element.value, "precision": d.precision.value, "bytes": d.bytes} for d in info.dense
        ],
        "active_generations": info.active_generations,
        "queued_generations": info.queued_generations,
    }


def _qos_dict(qos: QosStatus) -> dict[str, Any]:
    return {**dataclasses.asdict(qos), "state": qos.state.value}


def applied(plan: Plan, report: SwitchReport, as_json: bool) -> int:
    if as_json:
        print(_json({"plan": plan.to_spec(), **dataclasses.asdict(report)}))
    else:
        print(f"applied {plan.describe()}: {report.experts_changed} experts changed in {report.seconds:.3f}s")
    return 0


def budget(outcome: BudgetOutcome, as_json: bool) -> int:
    if as_json:
        print(_json({**dataclasses.asdict(outcome), "tiers": [t.to_dict() for t in outcome.tiers]}))
        return 0
    print(f"plan fits: {outcome.plan_fits}; re-plan started: {outcome.replan_started}")
    for tier in outcome.tiers:
        print(
            f"  tier {tier.name:<8} {format_bytes(tier.used_bytes):>12} used of {format_bytes(tier.budget_bytes):>12}"
        )
    return 0


def profile(events: Iterable[MeasureEvent], out: str | None, as_json: bool) -> int:
    """Show a progress bar per stage on stderr (with `as_json`: a JSON line per progress event on
    stdout), then write the profile JSON to `out` (or stdout)."""
    from tqdm import tqdm

    bar: Any = None
    result: Profile | None = None
    for event in events:
        if isinstance(event, Profile):
            result = event
        elif as_json:
            print(_json({"stage": event.stage, "done": event.done, "total": event.total}), flush=True)
        else:
            if bar is None or bar.desc != event.stage:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=event.total, desc=event.stage, file=sys.stderr)
            bar.update(event.done - bar.n)
    if bar is not None:
        bar.close()
    assert result is not None, "the profile stream ended without a profile"
    if out:
        Path(out).write_text(result.to_json(indent=2))
        print(_json({"profile": out}) if as_json else f"profile written to {out}")
    else:
        print(result.to_json(indent=None if as_json else 2))
    return 0
