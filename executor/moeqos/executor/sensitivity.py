"""Measure where quantization hurts: the output KL divergence when one layer's experts lose precision.

For each precision p and layer l, the experts of layer l (all of them, on the device tier) are switched
to p, everything else kept at the reference, and the model's next-token distribution on calibration
text is compared to the reference's:

    layer_kl[p][l] = mean over tokens of KL(P_ref(. | context) || P_{l in p}(. | context))    [nats]

This is the damage as the output sees it, so unlike a per-expert weight or activation error it sees
how much a layer's perturbation is amplified or washed out downstream. moeqos.core.sensitivity shares
it out over a layer's experts. Cost: one forward pass of `tokens` tokens for the reference, then per
(precision, layer) a pass from layer l on (the layers before compute what the reference's did, so each
pass starts from the reference's hidden states entering layer l: moeqos.executor.layer_tail; the same
KL to the bit, in 0.65-0.67x the time of whole passes on the default model, 256 tokens: 30.0 vs 45.1 s
and 32.8 vs 50.5 s, alternated in one process; the head and the weights each pass streams whatever its
length keep it above a half), plus switching one layer's experts each time (only the experts that
change are rebuilt).

Sees the runtime only as a moeqos.executor.measurement.Measurable: each temporary plan is served
inside `serving(plan)`, which restores the served plan afterwards (and on error).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor.measurement import Measurable

Progress = Callable[[str, float], None]


def reference_plan(runtime: Measurable, precision: Precision) -> Plan:
    """Every expert in `precision` on the device tier (named after the device, as in
    moeqos.executor.costs), at the served plan's group size."""
    return Plan.uniform(
        runtime.num_layers, runtime.num_experts, precision, runtime.config.device, runtime.plan.group_size
    )


def with_layer(plan: Plan, layer: int, precision: Precision) -> Plan:
    """`plan` with every expert of `layer` in `precision` (each keeping its tier)."""
    return plan.with_layers((layer,), precision)


def layer_kl(
    runtime: Measurable,
    ids: list[int],
    reference: Precision,
    precisions: Sequence[Precision],
    progress: Progress,
) -> dict[Precision, tuple[float, ...]]:
    """Per precision, [L] mean per-token KL(reference || layer l in p) on `ids` (one window).

    Each temporary plan is served inside `runtime.serving`, so the served plan is back afterwards (and
    on error); requests running meanwhile see the temporary plans. The per-layer plans are served
    inside the reference's, so each switch rebuilds only the one layer that differs from it.
    """
    window = torch.tensor([ids])  # [1, S]
    base = reference_plan(runtime, reference)
    out: dict[Precision, tuple[float, ...]] = {}
    steps, done = len(precisions) * runtime.num_layers, 0
    with runtime.serving(base):
        logits, inputs = runtime.layer_inputs(window)  # [1, S, V], L x [1, S, H]
        ref_logp = _log_probs(logits)  # [S, V]
        ref_p = ref_logp.exp()  # [S, V]
        for p in precisions:
            row = []
            for layer in range(runtime.num_layers):
                with runtime.serving(with_layer(base, layer, p)):
                    logp = _log_probs(runtime.logits_from(layer, inputs[layer], window))  # [S, V]
                row.append(float((ref_p * (ref_logp - logp)).sum(-1).mean().clamp_min(0.0)))
                done += 1
                progress("sensitivity", done / steps)
            out[p] = tuple(row)
    return out


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits[0].float(), dim=-1)  # [1, S, V] -> [S, V]
