"""Timing helpers: medians of repeated runs, and decode rates that leave the prompt's prefill out.

Every timing the suite reports is a median over `repeats` runs after `warmup` untimed runs, so one
slow run (a page fault, another process) does not move the number.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated runs of one thing."""

    samples: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a timing needs at least one sample")

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the runs were."""
        return (max(self.samples) - min(self.samples)) / self.median if self.median > 0 else 0.0

    def to_dict(self) -> dict[str, float | list[float]]:
        return {"median_s": self.median, "spread": self.spread, "samples_s": list(self.samples)}


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Run `fn` once; return its result and the seconds it took."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def time_repeats(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Median-ready timing of `fn`: `warmup` untimed calls, then `repeats` timed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    return Timing(tuple(timed(fn)[1] for _ in range(repeats)))


def decode_rate(tokens: int, first_token_at: float, end_at: float) -> float:
    """Decode tokens/s of a generation that produced `tokens` tokens, the first at `first_token_at`.

    Counting from the first token leaves the prompt's prefill out, the same way for every engine
    compared, so the rate is the steady decode rate the cost models predict.
    """
    if tokens < 2:
        raise ValueError(f"a decode rate needs at least 2 tokens, got {tokens}")
    if end_at <= first_token_at:
        raise ValueError(f"the generation ended ({end_at}) before its first token ({first_token_at})")
    return (tokens - 1) / (end_at - first_token_at)
