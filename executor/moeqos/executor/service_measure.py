"""How the executor service measures its profile and evaluates plans: which corpus, how many tokens,
which reference plans (policy), over ExecutorRuntime.profile / .evaluate (mechanism).

Over the wire only the fixed corpus names are accepted (`ptb:train`, ...): a `text:PATH` corpus would
let a remote caller make the server open any file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from moeqos.core.corpora import CALIBRATION_CORPUS, FITTING_CORPUS, corpus_names, load_corpus, tokenize_prefix
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision, groups_fit
from moeqos.core.profile import Profile
from moeqos.core.service_types import Evaluation
from moeqos.executor.profiling import PLANNING_PRECISIONS, recorded_disk_reads
from moeqos.executor.runtime import ExecutorRuntime

log = logging.getLogger(__name__)
T = TypeVar("T")

Progress = Callable[[str, float], None]

MAX_TOKENS = 65536
"""Most corpus tokens one request may ask to measure or score."""


@dataclass(frozen=True)
class MeasureSettings:
    """What a profile measurement covers (defaults keep it to seconds on a tiny model)."""

    corpus: str = CALIBRATION_CORPUS
    """Calibration corpus (frequencies, quantization errors)."""
    tokens: int = 1024
    """Calibration tokens."""
    quality_corpus: str = FITTING_CORPUS
    """Corpus the reference plans' perplexities are measured on."""
    quality_tokens: int = 512
    """Tokens scored per reference plan."""
    quality_precisions: tuple[Precision, ...] = PLANNING_PRECISIONS
    """Uniform plans (on the device) whose perplexity is measured; the most precise is the reference.
    Every quantized precision the planner may choose is here, so none of its quality coefficients
    falls back to a prior (a speed target would otherwise pick int3 on a prior's optimism)."""
    repeats: int = 3
    """Timing repeats per measured cost."""

    def __post_init__(self) -> None:
        for name in (self.corpus, self.quality_corpus):
            wire_corpus(name)
        for name in ("tokens", "quality_tokens"):
            if not 16 <= getattr(self, name) <= MAX_TOKENS:
                raise OutOfRange(f"{name} must be in [16, {MAX_TOKENS}], got {getattr(self, name)}")
        if self.repeats < 1:
            raise InvalidArgument(f"repeats must be >= 1, got {self.repeats}")


def wire_corpus(name: str) -> str:
    """`name` if it is one of the fixed corpora a remote caller may name, else InvalidArgument."""
    if name not in corpus_names():
        raise InvalidArgument(f"unknown corpus {name!r}; known: {', '.join(corpus_names())}")
    return name


def corpus_ids(runtime: ExecutorRuntime, name: str, tokens: int) -> list[int]:
    """The first `tokens` token ids of a fixed corpus under the runtime's tokenizer."""
    if not 16 <= tokens <= MAX_TOKENS:
        raise OutOfRange(f"tokens must be in [16, {MAX_TOKENS}], got {tokens}")
    if runtime.tokenizer is None:
        raise InvalidArgument("corpora need a tokenizer; this model directory has none")
    return list(tokenize_prefix(load_corpus(wire_corpus(name)), runtime.tokenizer, tokens).token_ids)


def measure(
    runtime: ExecutorRuntime, settings: MeasureSettings, quality: bool, progress: Progress
) -> Profile:
    """A fresh profile; with `quality`, also the perplexity of the uniform reference plans."""
    plans = [
        Plan.uniform(runtime.num_layers, runtime.num_experts, p, runtime.default_tier)
        for p in (settings.quality_precisions if quality else ())
        if groups_fit(p, *runtime.shape, runtime.plan.group_size)
    ]
    return runtime.profile(
        corpus_ids(runtime, settings.corpus, settings.tokens),
        settings.corpus,
        repeats=settings.repeats,
        max_tokens=settings.tokens,
        quality_plans=plans,
        quality_ids=corpus_ids(runtime, settings.quality_corpus, settings.quality_tokens) if plans else None,
        quality_corpus=settings.quality_corpus if plans else None,
        progress=progress,
    )


class MeasurementAbandoned(Exception):
    """Raised into a measurement, at its next progress report, once its caller has gone."""


async def with_progress(job: Callable[[Progress], Awaitable[T]]) -> AsyncIterator[tuple[str, float] | T]:
    """Run `job(progress)` (which calls `progress(stage, fraction)` from any thread) and yield each
    (stage, fraction) as it is reported, then the job's result.

    Closing the iterator early (the caller cancelled, its deadline passed) stops the job at its next
    progress report: an abandoned profile would otherwise hold the decode thread for minutes, its
    timing passes pausing every generation, for a result nobody reads."""
    loop, reports = asyncio.get_running_loop(), asyncio.Queue[tuple[str, float]]()
    abandoned = threading.Event()

    def progress(stage: str, fraction: float) -> None:
        if abandoned.is_set():
            raise MeasurementAbandoned(f"the caller went away during {stage}")
        loop.call_soon_threadsafe(reports.put_nowait, (stage, fraction))

    task = asyncio.ensure_future(job(progress))
    try:
        while not task.done() or not reports.empty():
            getter = asyncio.ensure_future(reports.get())
            try:
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                reported = getter.done()
                if not reported:
                    getter.cancel()
            if reported:
                yield getter.result()
        yield task.result()
    finally:
        if not task.done():
            abandoned.set()
            task.add_done_callback(_log_abandoned)


def _log_abandoned(task: asyncio.Future[Any]) -> None:
    """Say how an abandoned measurement ended (and retrieve its exception, which nobody awaits)."""
    error = None if task.cancelled() else task.exception()
    if isinstance(error, MeasurementAbandoned):
        log.info("profile measurement stopped: %s", error)
    elif error is not None:
        log.warning("abandoned profile measurement failed: %r", error)
    else:
        log.info("abandoned profile measurement finished before its next progress report")


def evaluate(runtime: ExecutorRuntime, corpus: str, tokens: int, plan: Plan | None) -> Evaluation:
    """Perplexity and decode tokens/s of `plan` (None: the plan in force) on a fixed corpus."""
    ids = corpus_ids(runtime, corpus, tokens)
    return runtime.evaluate(ids, plan, context_length=min(512, runtime.context_length), corpus=corpus)


def keep_quality(fresh: Profile, previous: Profile | None) -> Profile:
    """`fresh`, carrying over the previous profile's measured perplexities when it measured none:
    perplexity depends on the model and plan, not on the timings a re-measurement refreshes."""
    if fresh.quality_points or previous is None or previous.model.fingerprint != fresh.model.fingerprint:
        return fresh
    return dataclasses.replace(fresh, quality_points=previous.quality_points)


def load_saved(path: Path | None, runtime: ExecutorRuntime) -> Profile | None:
    """The profile saved at `path` if it was measured on this model and device with this disk tier
    (its pool's slots and how it reads files: both change what a disk expert costs), else None."""
    if path is None or not Path(path).is_file():
        return None
    try:
        profile = Profile.from_json(Path(path).read_text())
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable profile %s: %s", path, exc)
        return None
    same = (
        profile.model.fingerprint,
        profile.hardware.device,
        profile.disk_pool_slots,
        profile.disk_reads,
    ) == (
        runtime.model.fingerprint,
        runtime.hardware.device,
        runtime.config.disk_pool_slots,
        recorded_disk_reads(runtime),
    )
    if not same:
        log.info("ignoring profile %s: measured on another model, device or disk tier", path)
    return profile if same else None


def save(path: Path | None, profile: Profile) -> None:
    """Write the profile to `path` (atomically: a reader never sees half a file); no-op without a path."""
    if path is None:
        return
    partial = Path(path).with_suffix(".partial")
    partial.write_text(profile.to_json(indent=2))
    partial.replace(path)
