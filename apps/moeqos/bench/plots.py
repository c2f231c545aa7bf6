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
