"""How a layer's experts' quantization errors combine on the tokens routed to them.

A token leaves a MoE layer with sum_e r_e * expert_e(x) over its routed experts (router weights r). With
experts in a lossy precision each adds r_e * d_e(x), d_e = expert_q(x) - expert(x), so the output error's
energy over tokens t is

    sum_t |sum_e r_te d_e(x_t)|^2 = sum_t sum_e r_te^2 |d_e(x_t)|^2  +  cross terms of a token's experts.

The measured share of the cross terms is the layer's overlap (core Profile.error_overlap). Experts whose
errors are unrelated (distinct trained experts) put almost nothing there: quantizing half of them costs
about half the layer's damage. Experts with the same weights (a sparse-upcycled model) make the same
error on a token, so with two even weights the cross terms are half the energy: quantizing half of them
costs about a quarter (+ the diagonal's half of a half), which a per-expert additive model priced at a
half (moeqos.planner.quality_model uses the overlap).

Measured with the variants the factory builds (its memory cache holds them when the precision's errors
were just measured, moeqos.executor.variant_errors) on the captured states of each layer, routed by the
layer's own router, against ReferenceOutputs' fp32 outputs. Identical experts share one forward pass.
"""

from __future__ import annotations

import torch
from moeqos.core.precision import Precision
from moeqos.executor.measurement import Measurable
from moeqos.executor.variant_errors import ReferenceOutputs


def error_overlap(
    runtime: Measurable, references: ReferenceOutputs, precision: Precision
) -> tuple[float, ...]:
    """[L] the share of each layer's routed output-error energy in cross terms (see module docstring),
    every expert in `precision` at the served plan's group size, clamped to [0, 1] (anticorrelated errors
    would make it negative); 0 for a layer without error."""
    factory, device = runtime.factory, runtime.config.device
    group = precision.group(runtime.plan.group_size)
    blocks = runtime.moe_blocks()
    out = []
    for layer in range(runtime.num_layers):
        x = references.inputs(layer)  # [N, H]
        index, weights = blocks[layer].route(x)  # [N, K], [N, K]
        total = torch.zeros_like(x)  # [N, H] sum_e r_e d_e
        diagonal = 0.0  # sum over tokens and experts of r_e^2 |d_e|^2
        errors: dict[str, torch.Tensor] = {}
        for expert in range(runtime.num_experts):
            routed = (index == expert).to(torch.float32) * weights.float()  # [N, K]
            r = routed.sum(dim=1)  # [N] this expert's weight per token (0 where not routed)
            if not bool(r.any()):
                continue
            digest = references.digest(layer, expert)
            if digest not in errors:
                key = (layer, expert, precision, group)
                module = factory.build(key, device)
                try:
                    errors[digest] = module(x).float() - references.output(layer, expert)  # [N, H]
                finally:
                    factory.retire(key, module)
            weighted = r[:, None] * errors[digest]  # [N, H]
            total += weighted
            diagonal += float(weighted.pow(2).sum())
        energy = float(total.pow(2).sum())
        out.append(min(max(1.0 - diagonal / energy, 0.0), 1.0) if energy > 0 else 0.0)
    return tuple(out)
