"""How much work one benchmark run does: the full run, or a bounded `--quick` smoke run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

SECTIONS = (
    "frontier",
    "baseline",
    "bandwidth",
    "breakdown",
    "tiers",
    "offload",
    "planner",
    "paper",
    "quality",
    "dense",
)
"""The sections of a default run, in the order they run (later ones reuse what earlier ones measured)."""

OPT_IN_SECTIONS = ("contention", "peers", "singles")
"""Sections run only when named with `--only`, after the others: `contention` loads the machine on purpose
for minutes (a neighbour process burning a core) and starts servers of its own; `peers` builds llama.cpp
(minutes); `singles` evaluates every expert quantized alone (about 15 minutes on the default model)."""

ALL_SECTIONS = (*SECTIONS, *OPT_IN_SECTIONS)


@dataclass(frozen=True)
class Settings:
    """Token counts, repeats and plan counts of one run; every timing is a median of `repeats` runs."""

    quick: bool
    calibration_tokens: int
    """ptb:train tokens the profile's routing frequencies and quantization errors are measured on."""
    fit_tokens: int
    """ptb:valid tokens each fitting plan's perplexity is also measured on (the cross-corpus check; the
    quality model itself is fitted on the `eval_tokens` ptb:test tokens)."""
    eval_tokens: int
    """ptb:test tokens each held-out plan's perplexity is measured on."""
    context_length: int
    """Window of the perplexity evaluation (tokens scored per forward pass)."""
    decode_tokens: int
    """Tokens generated per decode-speed measurement."""
    repeats: int
    measured_plans: int
    """Held-out frontier plans measured (the goal needs at least 8)."""
    frontier_points: int
    """Frontier points the planner computes, the measured plans are picked among them."""
    bandwidth_bytes: int
    """Size of the tensor copied to measure memory bandwidth."""
    peer_threads: int = 2
    """Compute threads of both systems in the `peers` section (llama-bench `-t`, torch's threads)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Settings(
    quick=False,
    calibration_tokens=4096,
    fit_tokens=2048,
    eval_tokens=2048,
    context_length=512,
    decode_tokens=32,
    repeats=3,
    measured_plans=8,
    frontier_points=24,
    bandwidth_bytes=512 << 20,
)

QUICK = replace(
    FULL,
    quick=True,
    calibration_tokens=256,
    fit_tokens=128,
    eval_tokens=128,
    context_length=64,
    decode_tokens=8,
    repeats=2,
    measured_plans=3,
    frontier_points=8,
    bandwidth_bytes=256 << 20,
)


def parse_sections(text: str | None) -> list[str]:
    """`frontier,baseline` -> those sections in run order; None or empty -> the default run (SECTIONS).
    ValueError if unknown."""
    if not text:
        return list(SECTIONS)
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = wanted - set(ALL_SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(ALL_SECTIONS)}")
    return [s for s in ALL_SECTIONS if s in wanted]
