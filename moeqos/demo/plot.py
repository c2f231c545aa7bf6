"""The demo's frontier plot: predicted speed against predicted perplexity, with the deployed plans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Point:
    """One plan on the plot."""

    tokens_per_s: float
    perplexity: float
    label: str = ""


@dataclass(frozen=True)
class Deployed:
    """A deployed plan: where the planner predicted it, and where it was measured."""

    name: str
    predicted: Point
    measured: Point | None


def plot_frontier(frontier: Sequence[Point], deployed: Sequence[Deployed], path: Path, title: str) -> Path:
    """Write the frontier (line), the deployed plans' predictions (stars) and measurements (crosses,
    joined to their predictions) as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    ordered = sorted(frontier, key=lambda p: p.tokens_per_s)
    ax.plot(
        [p.tokens_per_s for p in ordered],
        [p.perplexity for p in ordered],
        "o-",
        color="0.55",
        markersize=4,
        label="frontier (predicted)",
    )
    for index, plan in enumerate(deployed):
        color = f"C{index}"
        ax.plot(
            plan.predicted.tokens_per_s,
            plan.predicted.perplexity,
            "*",
            color=color,
            markersize=15,
            label=f"{plan.name}: predicted",
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
            ax.plot(
                [plan.predicted.tokens_per_s, plan.measured.tokens_per_s],
                [plan.predicted.perplexity, plan.measured.perplexity],
                ":",
                color=color,
            )
    ax.set_xlabel("decode tokens/s (higher is faster)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
