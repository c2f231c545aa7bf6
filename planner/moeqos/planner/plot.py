"""A PNG of a frontier (matplotlib with the Agg backend, imported only when a plot is asked for)."""

from __future__ import annotations

from pathlib import Path

from moeqos.planner.solver import PlanResult


def plot_frontier(results: list[PlanResult], path: str | Path, title: str = "moeqos frontier") -> Path:
    """Write predicted perplexity against tokens/s to `path` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    speeds = [r.predicted_tokens_per_s for r in results]
    ppl = [r.predicted_perplexity for r in results]
    axes.plot(speeds, ppl, marker="o", linewidth=1.5)
    axes.set_xlabel("predicted decode tokens/s")
    axes.set_ylabel(
        "predicted perplexity" + (" (estimate)" if any(r.perplexity_is_estimate for r in results) else "")
    )
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    out = Path(path)
    figure.savefig(out, format="png", dpi=120)
    plt.close(figure)
    return out
