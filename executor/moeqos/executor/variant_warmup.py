"""Variants built ahead: a plan switch the QoS loop asks for reads files, it does not quantize.

Once the profile is known (measured or read back) and the executor is serving, one background thread
writes the on-disk variant of every expert in every quantized precision the profile measured (the
precisions the planner may choose), with the packed kernel file where loads use one
(VariantFactory.ensure_file), so a later switch builds each changed expert from its file (~4 ms for
int4 on the default model) instead of quantizing it from the checkpoint (~15 ms, and the whole switch
blocks on it). Float precisions are left out: building them from the checkpoint is a read already.

Order: precisions whose measured uniform plan has the lower perplexity first (the order in which a
loop trading quality for speed reaches for them; int2's useless quality puts it last), precisions
without a measured point after them, more bits first.

Honest about disk: the files count against the filesystem that holds the variant cache. A precision is
written only if all its missing files fit while leaving `reserve_bytes` free (measured before each
precision, so other writers count); otherwise it is skipped and the skip is logged and reported by
`describe()`. Nothing is built ahead where the cache is on a filesystem held in RAM (tmpfs: a private
cache under a /tmp that is one): those files would be memory no budget counts. The memory cache is
left alone (its entries are the variants of recent plans).

Low priority: the thread lowers its own scheduling priority (nice) before its first torch op and
builds on one torch thread, so it never starts an OpenMP team: a second live team makes libgomp park
its workers between parallel regions, which slowed the decode steps beside a build from ~24 to ~14
tok/s (moeqos.executor.torch_threads). torch keeps one count that every thread starts with at its
first parallel op, and setting it here sets that too, so the count is put back when the build ends;
the decode thread, which loaded the model, is past its first op and keeps its own count, so only a
plan switch made during a build (on a thread of its own) quantizes on one thread. It stops between
two experts when `stop()` is called.

Idle only: between two experts it waits while `busy()` says generations are decoding. Nice alone does
not keep it out of their way: the build is Python holding the GIL between its torch ops, and a thread
descheduled at nice 19 with the GIL held stalls the decode step waiting for it (on the quiet 2-core
machine the default model decoded ~20% slower while a build ran: 12 against 15 tok/s).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile, uniform_precision
from moeqos.core.units import format_bytes
from moeqos.executor.disk_room import MEMORY_FILESYSTEMS, filesystem_type, free_bytes
from moeqos.executor.variants import VariantFactory, VariantKey

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.1
"""How often a build waiting for the generations to finish looks again."""


@dataclass(frozen=True)
class WarmupSettings:
    """Knobs of the variants built ahead."""

    enabled: bool = True
    """False: variants are built on first use only (by the plan switch that needs them)."""
    reserve_bytes: int = 1 << 30
    """Free bytes left on the variant cache's filesystem: a precision that would go below is skipped."""
    nice: int = 19
    """Scheduling priority of the building thread (19: the lowest; where the OS supports it)."""

    def __post_init__(self) -> None:
        if self.reserve_bytes < 0 or not 0 <= self.nice <= 19:
            raise ValueError("need reserve_bytes >= 0 and 0 <= nice <= 19")


def warm_order(profile: Profile) -> list[Precision]:
    """The quantized precisions `profile` measured, in the order they are built (module docstring)."""
    measured: dict[Precision, float] = {}
    for point in profile.quality_points:
        precision = uniform_precision(point.plan_spec)
        if precision is not None:
            measured[precision] = min(point.perplexity, measured.get(precision, point.perplexity))
    quantized = [p for p in profile.precisions if not p.is_float]
    return sorted(quantized, key=lambda p: (p not in measured, measured.get(p, 0.0), -p.bits))


class VariantWarmup:
    """Builds the profile's variants ahead, once per profile, on a background thread."""

    def __init__(
        self,
        factory: Callable[[], VariantFactory],
        device: str,
        settings: WarmupSettings,
        free: Callable[[Path], int] = free_bytes,
        fs_type: Callable[[Path], str | None] = filesystem_type,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        """`factory()`: the runtime's variant factory (asked when a build starts, after load); `device`:
        where loads run (decides the packed files); `free`: free bytes of a directory's filesystem;
        `fs_type`: its type (None: unknown); `busy()`: whether generations are decoding (the build
        waits between experts while they are)."""
        self._factory = factory
        self._busy = busy
        self._device = device
        self.settings = settings
        self._free = free
        self._fs_type = fs_type
        self.refused = ""
        """Why nothing is built ahead at all (empty: it is)."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        """Builds started and not yet joined (an older one ends after its expert in hand)."""
        self._started_for: str | None = None
        self.built: dict[Precision, int] = {}
        """Experts per precision whose files are on disk now (written here or found there)."""
        self.skipped: dict[Precision, str] = {}
        """Precisions left out, with the reason."""
        self.done = False

    def start(self, profile: Profile) -> None:
        """Build `profile`'s variants in the background, unless off or already started for this
        profile (a re-measured profile starts again). Never waits (it is called on the event loop): a
        build in progress is told to stop and ends after the expert in hand."""
        key = f"{profile.measured_at}|{','.join(p.value for p in profile.precisions)}"
        if not self.settings.enabled or key == self._started_for:
            return
        self._stop.set()
        self._started_for = key
        self._stop = threading.Event()
        thread = threading.Thread(
            target=self._background, args=(profile, self._stop), name="variant-warmup", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    @property
    def building(self) -> bool:
        """Whether a build thread is running."""
        return any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop building (after the expert in hand) and wait for every build thread, so nothing is
        written after the caller removes the cache."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def _background(self, profile: Profile, stop: threading.Event) -> None:
        _lower_priority(self.settings.nice)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # no OpenMP team of its own (module docstring)
        try:
            self.run(profile, stop)
        except Exception:  # a failed build ahead only means the switch builds on first use
            log.exception("building variants ahead failed; plan switches build them on first use")
        finally:
            torch.set_num_threads(threads)

    def run(self, profile: Profile, stop: threading.Event | None = None) -> None:
        """Build every precision of `warm_order(profile)` on this thread (see the module docstring)."""
        stop = stop or threading.Event()
        factory = self._factory()
        built: dict[Precision, int] = {}
        skipped: dict[Precision, str] = {}
        self.built, self.skipped, self.done = built, skipped, False  # this run's (an older one keeps its own)
        kind = self._fs_type(factory.directory)
        if kind in MEMORY_FILESYSTEMS:
            self.refused = f"the variant cache {factory.directory} is on {kind} (RAM): not built ahead"
            log.warning("%s", self.refused)
            self.done = True
            return
        experts = [
            (layer, e) for layer in range(profile.model.num_layers) for e in range(profile.model.num_experts)
        ]
        for precision in warm_order(profile):
            keys = [(layer, e, precision, precision.group(profile.group_size)) for layer, e in experts]
            lacking = self._lacking_room(factory, keys)
            if lacking:
                skipped[precision] = lacking
                log.warning("variants of %s not built ahead: %s", precision.value, lacking)
                continue
            for count, key in enumerate(keys, 1):
                while self._busy() and not stop.is_set():
                    stop.wait(IDLE_POLL_S)
                if stop.is_set():
                    return
                factory.ensure_file(key, self._device, remember=False)
                built[precision] = count
        if not stop.is_set():
            self.done = True
            log.info("variants built ahead: %s", self.describe())

    def _lacking_room(self, factory: VariantFactory, keys: list[VariantKey]) -> str:
        """Why the files of `keys` not on disk yet do not fit (empty: they do)."""
        needed = factory.new_file_bytes(keys, self._device)
        free = self._free(factory.directory)
        if needed and needed + self.settings.reserve_bytes > free:
            return (
                f"needs {format_bytes(needed)}, {format_bytes(free)} free, "
                f"{format_bytes(self.settings.reserve_bytes)} kept in reserve"
            )
        return ""

    def describe(self) -> str:
        """For people: what is built ahead and what was skipped, and why."""
        if not self.settings.enabled:
            return "off"
        if self.refused:
            return f"off: {self.refused}"
        if self._started_for is None and not self.built:
            return "not started (waiting for the profile)"
        parts = [f"{p.value} {n}" for p, n in self.built.items()]
        parts += [f"{p.value} skipped ({why})" for p, why in self.skipped.items()]
        state = "done" if self.done else "building"
        return f"{state}: " + (", ".join(parts) if parts else "nothing yet")


def _lower_priority(nice: int) -> None:
    """Lower the calling OS thread's priority (Linux threads have their own nice value)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not Linux, or not allowed: built at normal priority
        log.info("building variants ahead at normal priority (could not lower it)")
