"""PNG plots of the sections' results (matplotlib, headless). Each returns the file it wrote."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def predicted_vs_measured(
    path: Path,
    speeds: tuple[Sequence[float], Sequence[float]],
    perplexities: tuple[Sequence[float], Sequence[float]],
    title: str,
) -> Path:
    """Two panels, tokens/s and perplexity, each (predicted, measured) with the y = x line."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, (predicted, measured), label in zip(
        axes, (speeds, perplexities), ("decode tokens/s", "perplexity"), strict=True
    ):
        ax.scatter(measured, predicted, color="tab:blue")
        low, high = min(*predicted, *measured), max(*predicted, *measured)
        ax.plot([low, high], [low, high], color="gray", linestyle="--", label="predicted = measured")
        ax.set_xlabel(f"measured {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.legend()
    fig.suptitle(title)
    return _save(plt, fig, path)


def frontier(
    path: Path,
    predicted: tuple[Sequence[float], Sequence[float]],
    measured: tuple[Sequence[float], Sequence[float]],
    title: str,
) -> Path:
    """The predicted frontier (tokens/s vs perplexity) with the measured plans over it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(*predicted, marker=".", color="gray", label="predicted frontier")
    ax.scatter(*measured, color="tab:red", zorder=3, label="measured")
    ax.set_xscale("log")
    ax.set_xlabel("decode tokens/s")
    ax.set_ylabel("perplexity")
    ax.legend()
    ax.set_title(title)
    return _save(plt, fig, path)


def series(
    path: Path, x: Sequence[float], ys: dict[str, Sequence[float]], labels: tuple[str, str], title: str
) -> Path:
    """One or more lines over a shared x axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, y in ys.items():
        ax.plot(x, y, marker="o", label=name)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.legend()
    ax.set_title(title)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def contention(
    path: Path,
    series: dict[str, tuple[Sequence[int], Sequence[float]]],
    floor: float,
    neighbour_start: float,
    neighbour_stop: float,
    title: str,
) -> Path:
    """Tokens/s per 1 s window of each run (label -> (rates, plan-switch times)), the floor, the
    neighbour's busy span shaded and each run's plan switches as ticks on its line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.axvspan(neighbour_start, neighbour_stop, color="tab:red", alpha=0.1, label="neighbour busy")
    ax.axhline(floor, color="black", linestyle="--", label="floor")
    for (label, (rates, switches)), color in zip(series.items(), ("tab:blue", "tab:orange"), strict=False):
        ax.plot([k + 0.5 for k in range(len(rates))], rates, color=color, label=f"{label} tok/s")
        for when in switches:
            ax.axvline(when, color=color, linestyle=":", alpha=0.8)
    ax.set_xlabel("seconds (dotted: plan switches)")
    ax.set_ylabel("decode tokens/s (1 s windows)")
    ax.legend(loc="lower left")
    fig.suptitle(title)
    return _save(plt, fig, path)
