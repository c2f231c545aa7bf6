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

`alone_increases` measures each layer whole, and for the few loud layers each expert alone, in one
precision the same way, as the log-perplexity increase of the quality text (its next tokens), not a KL:
on the default model the KL of one expert of a loud layer sits near a floor that any change reaches
(~0.002 nats on 256 tokens), and it named an expert that costs +0.2% alone as dear as one that costs
+1.5%; and the layer KL ranks layers 0 and 2 high though their increase is within the text's noise.

Sees the runtime only as a moeqos.executor.measurement.Measurable: each temporary plan is served
inside `serving(plan)`, which restores the served plan afterwards (and on error).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Alone:
    """Log-perplexity increases measured alone (`alone_increases`); empty when not measured."""

    layers: tuple[float, ...] = ()
    """[L] nats per scored token with every expert of layer l in the lossy precision."""
    layer_errors: tuple[float, ...] = ()
    """[L] the standard error of each of `layers`: its per-token increases' standard deviation over the
    square root of their count."""
    experts: dict[int, tuple[float, ...]] = field(default_factory=dict)
    """Per loud layer, [E] nats per scored token with only expert e of it in the lossy precision."""
    tokens: int = 0
    """Tokens scored (each window's next tokens)."""


def alone_increases(
    runtime: Measurable,
    windows: Sequence[list[int]],
    reference: Precision,
    precision: Precision,
    loud: Sequence[int],
    progress: Progress,
) -> Alone:
    """The log-perplexity increase of `windows` with every expert of each layer in `precision` and the
    rest in `reference`, with its standard error, and for each layer of `loud` the same with each of its
    experts alone (moeqos.core.sensitivity: the layers and the loud layers' experts alone). Each pass
    starts at its layer from the reference's hidden states, as `layer_kl`'s; the reference runs once
    per window for both; empty without windows."""
    if not windows:
        return Alone()
    layers, experts = runtime.num_layers, runtime.num_experts
    whole: list[list[torch.Tensor]] = [[] for _ in range(layers)]  # per layer, per window [S-1]
    single = {layer: [0.0] * experts for layer in loud}
    scored, steps, done = 0, len(windows) * (layers + len(loud) * experts), 0
    base = reference_plan(runtime, reference)
    with runtime.serving(base):
        for ids in windows:
            window = torch.tensor([ids])  # [1, S]
            logits, inputs = runtime.layer_inputs(window)  # [1, S, V], L x [1, S, H]
            ref_nll = _token_nll(logits, window)  # [S-1]
            scored += len(ids) - 1
            changes: list[tuple[int, int | None]] = [(layer, None) for layer in range(layers)]
            changes += [(layer, expert) for layer in loud for expert in range(experts)]
            for layer, expert in changes:
                plan = (
                    with_layer(base, layer, precision)
                    if expert is None
                    else base.with_expert(layer, expert, precision)
                )
                with runtime.serving(plan):
                    nll = _token_nll(runtime.logits_from(layer, inputs[layer], window), window)  # [S-1]
                if expert is None:
                    whole[layer].append(nll - ref_nll)
                else:
                    single[layer][expert] += float((nll - ref_nll).sum())
                done += 1
                progress("alone", done / steps)
    per_layer = [torch.cat(parts) for parts in whole]  # L x [scored]
    per_token = max(scored, 1)
    return Alone(
        tuple(float(d.mean()) for d in per_layer),
        tuple(float(d.std(correction=0)) / math.sqrt(per_token) for d in per_layer),
        {layer: tuple(v / per_token for v in row) for layer, row in single.items()},
        scored,
    )


def _token_nll(logits: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """[S-1] the negative log-likelihood of each next token of `window` [1, S] under `logits` [1, S, V]."""
    logp = _log_probs(logits)[:-1]  # [S-1, V]: position t predicts token t+1
    return -logp.gather(1, window[0, 1:, None].to(logp.device))[:, 0].cpu().double()
