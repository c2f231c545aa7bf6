"""The demo's frontier plot: predicted speed against predicted perplexity, with the deployed plans."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Point:
    """One plan on the plot."""

    tokens_per_s: float
    perplexity: float


@dataclass(frozen=True)
class Deployed:
    """A deployed plan: where the planner predicted it, and where it was measured."""

    name: str
    predicted: Point
    measured: Point | None


def plot_frontier(
    frontiers: Mapping[str, Sequence[Point]], deployed: Sequence[Deployed], path: Path, title: str
) -> Path:
    """Write each executor's frontier (a faint line, in the colour of the deployed plan of the same name),
    the deployed plans' predictions (stars) and measurements (crosses, joined to their predictions) as a
    PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    colors = {plan.name: f"C{index}" for index, plan in enumerate(deployed)}
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for index, (name, frontier) in enumerate(frontiers.items()):
        _line(
            ax,
            sorted(frontier, key=lambda p: p.tokens_per_s),
            colors.get(name, f"C{len(colors) + index}"),
            f"{name}: frontier (predicted)",
        )
    for plan in deployed:
        color = colors[plan.name]
        ax.plot(
            plan.predicted.tokens_per_s,
            plan.predicted.perplexity,
            "*",
            color=color,
            markersize=15,
            label=f"{plan.name}: deployed, predicted",
        )
        if plan.measured is not None:
            ax.plot(
                plan.measured.tokens_per_s,
                plan.measured.perplexity,
                "X",
                color=color,
                markersize=10,
                label=f"{plan.name}: measured",
            )
            _line(ax, [plan.predicted, plan.measured], color, None, style=":")
    _clip_outliers(ax, [p for line in frontiers.values() for p in line], deployed)
    ax.set_xlabel("decode tokens/s (higher is faster)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _line(ax: Any, points: Sequence[Point], color: str, label: str | None, style: str = "o-") -> None:
    xs, ys = [p.tokens_per_s for p in points], [p.perplexity for p in points]
    ax.plot(xs, ys, style, color=color, alpha=0.5 if label else 1.0, markersize=4, label=label)


def _clip_outliers(ax: Any, frontier: Sequence[Point], deployed: Sequence[Deployed]) -> None:
    """Keep the y axis on the interesting band: frontier plans far worse than both the best plan and the
    deployed ones (2-bit experts can be) would squash it flat, so they are left above the top, and said."""
    best = min([p.perplexity for p in frontier] + [d.predicted.perplexity for d in deployed])
    shown = [d.predicted.perplexity for d in deployed] + [
        d.measured.perplexity for d in deployed if d.measured
    ]
    cap = max([1.5 * best, *shown])
    above = [p.perplexity for p in frontier if p.perplexity > cap]
    if above:
        lowest = min([p.perplexity for p in frontier], default=best)
        ax.set_ylim(min(lowest, *shown) * 0.95, cap * 1.05)
        ax.annotate(
            f"{len(above)} frontier plan(s) above, up to perplexity {max(above):.0f}",
            xy=(0.99, 0.98),
            xycoords="axes fraction",
            ha="right",
            va="top",
            fontsize=8,
        )
