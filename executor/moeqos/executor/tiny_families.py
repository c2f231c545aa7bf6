"""Tiny random checkpoints of every supported MoE family (real Hugging Face format, written offline in
seconds) for tests and for a user's smoke test (`moeqos model tiny --family NAME --out DIR`).

Each keeps its family's routing features, scaled down: Qwen2-MoE a gated shared expert twice a routed
expert's size and no top-k renormalisation; Qwen3-MoE many small experts, renormalised; OLMoE no
renormalisation; Granite-MoE fused expert tensors and its embedding/residual/logit multipliers;
DeepSeek-V3 a dense first layer, grouped sigmoid routing with a nonzero correction bias, scaling and a
shared expert. The checkpoint is written by transformers' own `save_pretrained`, so its layout is the
one real checkpoints of the family have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from moeqos.core.errors import InvalidArgument
from moeqos.executor.adapters import adapter_for
from moeqos.executor.checkpoint import Checkpoint
from moeqos.executor.testing import make_tiny_mixtral, write_tokenizer

COMMON: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "initializer_range": 0.08,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}
"""Shared by every family (the tokenizer written beside has 256 tokens, ids 0-2 special)."""

FAMILIES: dict[str, dict[str, Any]] = {
    "qwen2_moe": {
        "intermediate_size": 128,
        "moe_intermediate_size": 64,
        "shared_expert_intermediate_size": 128,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "norm_topk_prob": False,
    },
    "qwen3_moe": {
        "intermediate_size": 128,
        "moe_intermediate_size": 64,
        "num_experts": 16,
        "num_experts_per_tok": 4,
        "norm_topk_prob": True,
        "head_dim": 16,
    },
    "olmoe": {"intermediate_size": 64, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": False},
    "granitemoe": {
        "intermediate_size": 64,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "embedding_multiplier": 2.0,
        "residual_multiplier": 0.5,
        "attention_multiplier": 0.25,
        "logits_scaling": 4.0,
    },
    "deepseek_v3": {
        "num_hidden_layers": 3,
        "first_k_dense_replace": 1,
        "intermediate_size": 128,
        "moe_intermediate_size": 64,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "n_group": 4,
        "topk_group": 2,
        "n_shared_experts": 1,
        "routed_scaling_factor": 2.5,
        "norm_topk_prob": True,
        "q_lora_rank": 32,
        "kv_lora_rank": 32,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 16,
        "v_head_dim": 16,
        "num_key_value_heads": 4,
    },
}
"""Config overrides per family (`mixtral` is moeqos.executor.testing.make_tiny_mixtral)."""


def family_names() -> list[str]:
    """Every family `make_tiny` writes."""
    return sorted(["mixtral", *FAMILIES])


def make_tiny(family: str, directory: Path, *, seed: int = 0, with_tokenizer: bool = True) -> Path:
    """Write a random checkpoint of `family` (and a small tokenizer) into `directory`; return it.
    InvalidArgument for an unknown family."""
    directory = Path(directory)
    if family == "mixtral":
        return make_tiny_mixtral(directory, seed=seed, with_tokenizer=with_tokenizer)
    if family not in FAMILIES:
        raise InvalidArgument(f"family {family!r} is not supported; supported: {family_names()}")
    adapter = adapter_for(family)
    config = adapter.config_class(**{**COMMON, **FAMILIES[family]})
    torch.manual_seed(seed)
    model: Any = adapter.model_class(config)
    _randomise_router_biases(model, seed)
    model.save_pretrained(str(directory))
    adapter.expert_source(config, Checkpoint(directory)).check()  # the layout the adapter reads
    if with_tokenizer:
        write_tokenizer(directory, int(config.vocab_size))
    return directory


def _randomise_router_biases(model: torch.nn.Module, seed: int) -> None:
    """DeepSeek-V3's correction biases start at zero; random ones make the tests see them matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(torch.randn(buffer.shape, generator=gen) * 0.05)
