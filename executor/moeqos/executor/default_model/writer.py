"""Write an upcycled Mixtral checkpoint straight from the dense model, a few layers at a time.

The checkpoint is a standard Hugging Face Mixtral directory: `config.json`, safetensors shards with the
per-expert keys (`model.layers.L.block_sparse_moe.experts.E.w1/w2/w3.weight`, `...gate.weight`) and
`model.safetensors.index.json`. Only one shard's tensors (the experts of `layers_per_shard` layers)
exist at once, never the whole Mixtral.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from moeqos.executor.default_model.upcycle import (
    UpcycleRecipe,
    layer_checkpoint_tensors,
    mixtral_config,
    non_expert_tensors,
    router_weights,
)
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

INDEX_FILE = "model.safetensors.index.json"


def shard_layers(num_layers: int, layers_per_shard: int) -> list[range]:
    """Consecutive layer ranges, one per shard."""
    if layers_per_shard <= 0:
        raise ValueError(f"layers_per_shard must be positive, got {layers_per_shard}")
    return [
        range(start, min(start + layers_per_shard, num_layers))
        for start in range(0, num_layers, layers_per_shard)
    ]


def write_checkpoint(
    dense: LlamaForCausalLM,
    out_dir: Path,
    recipe: UpcycleRecipe,
    dtype: torch.dtype = torch.bfloat16,
    layers_per_shard: int = 5,
    on_layer: Callable[[int], None] | None = None,
) -> int:
    """Write the upcycled Mixtral of `dense` into `out_dir` in `dtype`; returns the bytes of tensors.

    The first shard also holds the non-MLP tensors of all layers, the embedding and the final norm.
    `on_layer(layer)` is called after each layer is written (progress bars).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    config = mixtral_config(dense.config, recipe)
    config.dtype = dtype
    config.save_pretrained(out_dir)
    dense_state = dense.state_dict()
    routers = router_weights(dense.config, recipe)
    shards = shard_layers(config.num_hidden_layers, layers_per_shard)
    weight_map: dict[str, str] = {}
    total = 0
    for index, layers in enumerate(shards):
        tensors = dict(non_expert_tensors(dense)) if index == 0 else {}
        for layer in layers:
            tensors.update(layer_checkpoint_tensors(dense_state, layer, routers[layer], recipe.num_experts))
        name = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        total += _save_shard({key: t.to(dtype).contiguous() for key, t in tensors.items()}, out_dir / name)
        weight_map.update(dict.fromkeys(tensors, name))
        for layer in layers:
            if on_layer is not None:
                on_layer(layer)
    index_doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / INDEX_FILE).write_text(json.dumps(index_doc, indent=2) + "\n")
    return total


def _save_shard(tensors: dict[str, torch.Tensor], path: Path) -> int:
    save_file(tensors, str(path), metadata={"format": "pt"})
    return sum(t.numel() * t.element_size() for t in tensors.values())
