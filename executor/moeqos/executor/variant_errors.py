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

import torch
from moeqos.core.precision import Precision
from moeqos.core.profile import Grid
from moeqos.executor.measurement import Measurable
from moeqos.executor.quant import reference_expert_forward, relative_error


class ReferenceOutputs:
    """The fp32 experts' outputs y [N, H] on each layer's captured states, computed once per expert."""

    def __init__(self, runtime: Measurable, captured: list[torch.Tensor]) -> None:
        self.runtime = runtime
        self.captured = captured
        self._outputs: dict[tuple[int, int], torch.Tensor] = {}

    def inputs(self, layer: int) -> torch.Tensor:
        """The captured states of `layer` [N, H] fp32 on the device."""
        return self.captured[layer].to(self.runtime.config.device)

    def output(self, layer: int, expert: int) -> torch.Tensor:
        key = (layer, expert)
        if key not in self._outputs:
            device = self.runtime.config.device
            w1, w2, w3 = (w.to(device, torch.float32) for w in self.runtime.factory.read_weights(*key))
            self._outputs[key] = reference_expert_forward(w1, w2, w3, self.inputs(layer))  # [N, H]
        return self._outputs[key]


def variant_errors(runtime: Measurable, references: ReferenceOutputs, precision: Precision) -> Grid:
    """[L][E] ||y_q - y|| / ||y|| of every expert in `precision` (at the served plan's group size),
    each variant built by the factory and given back to it (its memory cache keeps it for the plan
    measured next)."""
    factory, device = runtime.factory, runtime.config.device
    group = precision.group(runtime.plan.group_size)
    rows = []
    for layer in range(runtime.num_layers):
        x = references.inputs(layer)  # [N, H]
        row = []
        for expert in range(runtime.num_experts):
            key = (layer, expert, precision, group)
            module = factory.build(key, device)
            try:
                row.append(relative_error(module(x).float(), references.output(layer, expert)))
            finally:
                factory.retire(key, module)
        rows.append(tuple(row))
    return tuple(rows)
