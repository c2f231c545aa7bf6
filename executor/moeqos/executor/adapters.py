"""The model-specific part of the runtime, kept thin: tensor names and module paths per architecture.

Everything else (loading, expert store, generation, profiling) is written against `ModelAdapter`, so a
Qwen2-MoE or OLMoE adapter is a new instance of this class, not a new runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moeqos.core.errors import InvalidArgument
from torch import nn


@dataclass(frozen=True)
class ModelAdapter:
    """How to find experts, routers and MoE blocks of one architecture."""

    model_type: str
    """config.json `model_type` this adapter serves."""
    expert_key: str
    """Checkpoint key of one expert matrix; fields: layer, expert, name (w1/w2/w3)."""
    router_key: str
    """Checkpoint key of a layer's router weight [E, H]; field: layer."""
    model_class: Callable[[Any], nn.Module]
    """Builds the transformers model (with its stock MoE blocks) from a config."""
    config_class: Callable[..., Any]
    """The transformers config class (its `from_pretrained` reads config.json)."""
    moe_module: str = "mlp"
    """Attribute of a decoder layer holding its MoE block (what the runtime swaps)."""

    def expert_keys(self, layer: int, expert: int) -> tuple[str, str, str]:
        """Keys of (w1 [I, H], w2 [H, I], w3 [I, H])."""
        return tuple(self.expert_key.format(layer=layer, expert=expert, name=n) for n in ("w1", "w2", "w3"))  # type: ignore[return-value]

    @staticmethod
    def layers(model: nn.Module) -> nn.ModuleList:
        """The decoder layers, each with a MoE block at `moe_module`."""
        layers = model.get_submodule("model.layers")
        assert isinstance(layers, nn.ModuleList)
        return layers

    @staticmethod
    def num_layers(config: Any) -> int:
        return int(config.num_hidden_layers)

    @staticmethod
    def num_experts(config: Any) -> int:
        return int(config.num_local_experts)

    @staticmethod
    def top_k(config: Any) -> int:
        return int(config.num_experts_per_tok)


def _mixtral() -> ModelAdapter:
    from transformers import MixtralConfig, MixtralForCausalLM

    return ModelAdapter(
        model_type="mixtral",
        expert_key="model.layers.{layer}.block_sparse_moe.experts.{expert}.{name}.weight",
        router_key="model.layers.{layer}.block_sparse_moe.gate.weight",
        model_class=MixtralForCausalLM,
        config_class=MixtralConfig,
    )


ADAPTERS: dict[str, Callable[[], ModelAdapter]] = {"mixtral": _mixtral}


def adapter_for(model_type: str) -> ModelAdapter:
    """The adapter for a config.json `model_type`; InvalidArgument naming the supported ones."""
    if model_type not in ADAPTERS:
        raise InvalidArgument(f"model_type {model_type!r} is not supported; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[model_type]()
