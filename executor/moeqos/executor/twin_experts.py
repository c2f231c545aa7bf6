"""Quantize a layer's identical experts once.

A sparse-upcycled MoE (the default model: every expert starts as a copy of the dense MLP) stores the same
weights under every expert of a layer, and its variants are built expert after expert: a plan switch,
a uniform quality plan and the profile's error measurement each quantized the same weights eight times
(most of the profile's `quant_error` and `fixed` stages on the default model). `TwinExperts` remembers,
per (layer, precision, group size), the last expert quantized there: a fingerprint of its weights (a
strided sample of each matrix, a few KiB) and a weak reference to its variant. An expert whose
fingerprint matches is compared in full with that expert's weights (read again from the checkpoint) and,
when identical and the variant is still alive (held by a plan or the memory cache), gets the same
variant object: experts are never mutated (QuantExpert.to_device), so sharing one is safe. Distinct
experts differ in their fingerprint and pay only its comparison; nothing large is held. A proof of
identity is remembered (`known`; the checkpoint does not change under a running executor), so later
builds of a twin, in any precision, take the live variant without reading or comparing its weights:
in a profile of the default model the reads and full comparisons had cost 26 s, 3x the quantizations
they saved. `origin` names the expert a shared variant was quantized for, so the variant cache can
link that expert's file instead of converting and writing the same bytes again
(moeqos.executor.variants).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence

import torch
from moeqos.core.precision import Precision
from moeqos.executor.quant import QuantExpert

Weights = Sequence[torch.Tensor]
SAMPLES = 1024
"""Elements sampled from each matrix for the fingerprint."""


def fingerprint(weights: Weights) -> tuple[torch.Tensor, ...]:
    """A strided sample of each tensor (shape and dtype are in the comparison through it)."""
    out = []
    for w in weights:
        flat = w.reshape(-1)
        out.append(flat[:: max(1, flat.numel() // SAMPLES)].clone())
    return tuple(out)


class TwinExperts:
    """The last quantized expert per (layer, precision, group size), and which experts were proved
    identical: see the module docstring."""

    def __init__(self, read_weights: Callable[[int, int], Weights]) -> None:
        self._read = read_weights
        self._last: dict[tuple[int, Precision, int], tuple[int, tuple[torch.Tensor, ...], weakref.ref]] = {}
        self._same: dict[tuple[int, int], int] = {}
        """(layer, expert) -> the expert of the layer its weights were first proved equal to (itself
        when it was quantized before any match): experts with the same entry are identical."""
        self._lock = threading.Lock()

    def known(self, layer: int, expert: int, precision: Precision, group: int) -> QuantExpert | None:
        """The live variant in (`precision`, `group`) of an expert proved identical to (`layer`,
        `expert`) before (itself included), without reading or comparing weights; else None."""
        with self._lock:
            kind = self._same.get((layer, expert))
            last = self._last.get((layer, precision, group))
            if kind is None or last is None or self._same.get((layer, last[0])) != kind:
                return None
        return last[2]()

    def find(
        self, layer: int, expert: int, precision: Precision, group: int, weights: Weights
    ) -> QuantExpert | None:
        """The variant of an expert of `layer` with exactly `weights` (those of `expert`), quantized in
        (`precision`, `group`) and still alive, or None. A match is remembered for `known`."""
        with self._lock:
            last = self._last.get((layer, precision, group))
        if last is None:
            return None
        twin, sample, ref = last
        if not _identical(fingerprint(weights), sample):
            return None
        module = ref()
        if module is None or not _identical(weights, self._read(layer, twin)):
            return None
        with self._lock:
            self._same.setdefault((layer, expert), self._same.get((layer, twin), twin))
        return module

    def origin(self, layer: int, precision: Precision, group: int, module: QuantExpert) -> int | None:
        """The expert of `layer` that `module` (this very object) was quantized for in (`precision`,
        `group`), while it is the one remembered there; None for any other object."""
        with self._lock:
            last = self._last.get((layer, precision, group))
        return None if last is None or last[2]() is not module else last[0]

    def remember(
        self, layer: int, expert: int, precision: Precision, group: int, weights: Weights, module: QuantExpert
    ) -> None:
        """`module` is the fresh variant of (`layer`, `expert`) in (`precision`, `group`)."""
        with self._lock:
            self._last[(layer, precision, group)] = (expert, fingerprint(weights), weakref.ref(module))
            self._same.setdefault((layer, expert), expert)


def _identical(ours: Weights, theirs: Weights) -> bool:
    """Same number of tensors, each of the same shape, dtype and values."""
    return len(ours) == len(theirs) and all(
        a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        for a, b in zip(ours, theirs, strict=True)
    )
