"""Sparse upcycling on tiny random dense Llamas: the Mixtral computes the same function, in memory and
after a round trip through the per-expert checkpoint on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from moeqos.executor.default_model.upcycle import UpcycleRecipe, mixtral_config, router_weights, upcycle
from moeqos.executor.default_model.writer import INDEX_FILE, shard_layers, write_checkpoint
from safetensors import safe_open
from transformers import LlamaConfig, MixtralForCausalLM

from tests.model.tiny import tiny_dense, tiny_llama_config

RECIPE = UpcycleRecipe(num_experts=4, top_k=2, router_seed=7, router_std=0.5)


def _ids(vocab: int, length: int = 24, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(seed))  # [B, T]


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits  # [B, T, V]


@pytest.mark.parametrize("tied", [True, False])
def test_upcycled_model_reproduces_dense_logits(tied: bool) -> None:
    dense = tiny_dense(seed=11, tied=tied)
    moe = upcycle(dense, RECIPE)
    ids = _ids(dense.config.vocab_size)
    reference = _logits(dense, ids)
    assert torch.allclose(_logits(moe, ids), reference, atol=1e-5, rtol=1e-5)
    assert reference.abs().max() > 0.1  # the comparison is not between two near-zero outputs


def test_routing_is_non_trivial_and_deterministic() -> None:
    dense = tiny_dense(seed=12)
    first, again = router_weights(dense.config, RECIPE), router_weights(dense.config, RECIPE)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])  # each layer its own router
    moe = upcycle(dense, RECIPE)
    with torch.inference_mode():
        hidden = moe.model.embed_tokens(_ids(dense.config.vocab_size, length=64)).reshape(-1, 32)  # [T, H]
        scores = hidden @ moe.model.layers[0].mlp.gate.weight.T  # [T, E]
    chosen = scores.topk(RECIPE.top_k, dim=-1).indices.unique()
    assert len(chosen) > RECIPE.top_k  # tokens spread over more experts than one top-k set


def test_mixtral_config_keeps_dense_geometry() -> None:
    dense = tiny_llama_config(tied=True)
    config = mixtral_config(dense, RECIPE)
    assert (config.num_local_experts, config.num_experts_per_tok) == (4, 2)
    assert config.tie_word_embeddings and config.sliding_window is None and config.router_jitter_noise == 0
    assert config.num_key_value_heads == 2 and config.head_dim == 8
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 12345.0}
    assert config.rms_norm_eps == 1e-6


def test_biased_or_non_llama_models_are_refused() -> None:
    with pytest.raises(ValueError, match="bias"):
        mixtral_config(LlamaConfig(mlp_bias=True), RECIPE)
    with pytest.raises(ValueError, match="SiLU"):
        mixtral_config(LlamaConfig(hidden_act="gelu"), RECIPE)


def test_checkpoint_round_trip_has_per_expert_keys(tmp_path: Path) -> None:
    dense = tiny_dense(seed=13)
    write_checkpoint(dense, tmp_path, RECIPE, torch.float32, layers_per_shard=2)
    index = json.loads((tmp_path / INDEX_FILE).read_text())["weight_map"]
    for layer in range(3):
        assert f"model.layers.{layer}.block_sparse_moe.gate.weight" in index
        for expert in range(RECIPE.num_experts):
            for name in ("w1", "w2", "w3"):
                assert f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{name}.weight" in index
    assert "lm_head.weight" not in index  # tied: stored once, as the embedding
    assert len(set(index.values())) == len(shard_layers(3, 2)) == 2
    shard = tmp_path / index["model.layers.2.block_sparse_moe.experts.3.w2.weight"]
    with safe_open(str(shard), framework="pt") as handle:
        w2 = handle.get_tensor("model.layers.2.block_sparse_moe.experts.3.w2.weight")
    assert torch.equal(w2, dense.model.layers[2].mlp.down_proj.weight)
    reloaded = MixtralForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = _ids(dense.config.vocab_size, seed=5)
    assert torch.allclose(_logits(reloaded, ids), _logits(dense, ids), atol=1e-5, rtol=1e-5)


def test_bf16_checkpoint_is_close_but_not_identical(tmp_path: Path) -> None:
    dense = tiny_dense(seed=14)
    write_checkpoint(dense, tmp_path, RECIPE, torch.bfloat16, layers_per_shard=5)
    reloaded = MixtralForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    ids = _ids(dense.config.vocab_size, seed=6)
    difference = (_logits(reloaded, ids) - _logits(dense, ids)).abs().max()
    assert 0 < difference < 0.05
