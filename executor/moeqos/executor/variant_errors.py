"""Quantization errors measured on the variants a uniform quality plan is about to build anyway.

The profile's `quant_error` stage quantizes every expert in every profiled precision to compare it with
the fp32 expert on the captured hidden states; its `quality` stage then quantizes the same experts again
to measure each precision's uniform plan (the variant factory's 1 GiB memory cache cannot keep 240
experts in eight precisions from one stage to the other). Measured here instead, right before that
plan, the variants are built through the factory, measured, and handed back to its memory cache, from
which the plan view takes them: one quantization per variant, for both stages. Each error is the same
number the direct measurement (moeqos.executor.profiling.quant_errors) gives: the same weights through
the same round-to-nearest, on the same states.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from moeqos.core.precision import Precision
from moeqos.core.profile import Grid
from moeqos.executor.measurement import Measurable
from moeqos.executor.quant import reference_expert_forward, relative_error


class ReferenceOutputs:
    """The fp32 experts' outputs y [N, H] on each layer's captured states, computed once per distinct
    expert of a layer (experts with bitwise identical weights, as in a sparse-upcycled model, share
    one), and each expert's weights digest."""

    def __init__(self, runtime: Measurable, captured: list[torch.Tensor]) -> None:
        self.runtime = runtime
        self.captured = captured
        self._digests: dict[tuple[int, int], str] = {}
        self._outputs: dict[tuple[int, str], torch.Tensor] = {}

    def inputs(self, layer: int) -> torch.Tensor:
        """The captured states of `layer` [N, H] fp32 on the device."""
        return self.captured[layer].to(self.runtime.config.device)

    def digest(self, layer: int, expert: int) -> str:
        """content_hash of the expert's checkpoint weights."""
        key = (layer, expert)
        if key not in self._digests:
            self._digests[key] = content_hash(self.runtime.factory.read_weights(*key))
        return self._digests[key]

    def output(self, layer: int, expert: int) -> torch.Tensor:
        key = (layer, self.digest(layer, expert))
        if key not in self._outputs:
            device = self.runtime.config.device
            weights = self.runtime.factory.read_weights(layer, expert)
            w1, w2, w3 = (w.to(device, torch.float32) for w in weights)
            self._outputs[key] = reference_expert_forward(w1, w2, w3, self.inputs(layer))  # [N, H]
        return self._outputs[key]


def content_hash(weights: Sequence[torch.Tensor]) -> str:
    """A digest of the tensors' dtypes, shapes and bytes (bitwise identity, not closeness)."""
    digest = hashlib.blake2b(digest_size=16)
    for w in weights:
        flat = w.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{w.dtype}{tuple(w.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def variant_errors(runtime: Measurable, references: ReferenceOutputs, precision: Precision) -> Grid:
    """[L][E] ||y_q - y|| / ||y|| of every expert in `precision` (at the served plan's group size),
    each variant built by the factory and given back to it (its memory cache keeps it for the plan
    measured next); identical experts of a layer share one forward pass."""
    factory, device = runtime.factory, runtime.config.device
    group = precision.group(runtime.plan.group_size)
    rows = []
    for layer in range(runtime.num_layers):
        x = references.inputs(layer)  # [N, H]
        measured: dict[str, float] = {}
        row = []
        for expert in range(runtime.num_experts):
            key = (layer, expert, precision, group)
            module = factory.build(key, device)
            try:
                digest = references.digest(layer, expert)
                if digest not in measured:
                    y = references.output(layer, expert)  # [N, H]
                    measured[digest] = relative_error(module(x).float(), y)
                row.append(measured[digest])
            finally:
                factory.retire(key, module)
        rows.append(tuple(row))
    return tuple(rows)
