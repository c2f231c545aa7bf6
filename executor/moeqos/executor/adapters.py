"""The model-specific part of the runtime, kept thin: tensor names, module paths and routing per family.

Everything else (loading, expert store, generation, profiling) is written against `ModelAdapter` and the
`MoeSpec` it reads from a config, so a family is one instance of this class, not a new runtime.

Plan elements: plan layer l is the l-th decoder layer with a MoE block (DeepSeek-V3's first layers and
Qwen's `mlp_only_layers` are dense MLPs, loaded with the dense weights); in each, experts 0..E-1 are the
routed experts and E..E+S-1 the slices of the shared expert (moeqos.executor.expert_io), so a model
without shared experts has exactly the plans it had before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moeqos.core.errors import InvalidArgument
from moeqos.executor.checkpoint import Checkpoint
from moeqos.executor.expert_io import ExpertSource, Fused, PerExpert, RoutedLayout, SharedMlp
from moeqos.executor.routing import GroupedSigmoidTopK, Router, SoftmaxTopK, WithShared
from torch import nn


@dataclass(frozen=True)
class MoeSpec:
    """The MoE shape of one model, read from its config."""

    moe_layers: tuple[int, ...]
    """Decoder index of each MoE layer, in order (plan layer l is decoder layer moe_layers[l])."""
    num_routed: int
    """Routed experts per MoE layer (E)."""
    top_k: int
    """Routed experts each token runs (K)."""
    num_shared: int
    """Shared-expert slices per MoE layer (S): the shared expert's intermediate size over I; 0 for none."""
    hidden: int
    intermediate: int
    """Intermediate size of one routed expert (and of one shared slice), I."""

    @property
    def num_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def num_experts(self) -> int:
        """Plan elements per layer: E routed plus S shared slices."""
        return self.num_routed + self.num_shared

    @property
    def per_token(self) -> int:
        """Experts run per token (each profile row sums to this): K routed plus S shared slices."""
        return self.top_k + self.num_shared


@dataclass(frozen=True)
class ModelAdapter:
    """How to find the experts, routers and MoE blocks of one architecture."""

    model_type: str
    """config.json `model_type` this adapter serves."""
    model_class: Callable[[Any], nn.Module]
    """Builds the transformers model (with its stock MoE blocks) from a config."""
    config_class: Callable[..., Any]
    """The transformers config class (its `from_pretrained` reads config.json)."""
    spec: Callable[[Any], MoeSpec]
    """The MoE shape of a config (InvalidArgument for one this runtime cannot serve)."""
    routed: RoutedLayout
    """Where the routed experts lie in the checkpoint (decoder layer index in the keys)."""
    router_key: str
    """Checkpoint key of a layer's router weight [E, H]; field: layer (decoder index)."""
    make_router: Callable[[Any, MoeSpec, Checkpoint, int], Router]
    """(config, checkpoint, decoder layer) -> the layer's routed-expert router, fp32."""
    shared: SharedMlp | None = None
    """The shared expert's tensors, for families that have one."""
    shared_gate_key: str | None = None
    """Checkpoint key of the shared expert's sigmoid gate [1, H] (Qwen2-MoE); None: weight 1."""
    router_extra_keys: tuple[str, ...] = ()
    """Other router tensors (DeepSeek-V3's correction bias); field: layer."""
    moe_module: str = "mlp"
    """Attribute of a decoder layer holding its MoE block (what the runtime swaps)."""

    @staticmethod
    def layers(model: nn.Module) -> nn.ModuleList:
        """The decoder layers."""
        layers = model.get_submodule("model.layers")
        assert isinstance(layers, nn.ModuleList)
        return layers

    def router(self, config: Any, checkpoint: Checkpoint, layer: int) -> Router:
        """The fp32 router of decoder layer `layer`, shared-expert slices appended when there are any."""
        spec = self.spec(config)
        routed = self.make_router(config, spec, checkpoint, layer)
        if not spec.num_shared:
            return routed
        gate = None
        if self.shared_gate_key is not None:
            gate = checkpoint.read(self.shared_gate_key.format(layer=layer), (1, spec.hidden))
        return WithShared(routed, spec.num_routed, spec.num_shared, gate)

    def router_keys(self, config: Any) -> set[str]:
        """Every checkpoint key read into a router (served in fp32 whatever the dense precision)."""
        templates = (self.router_key, *self.router_extra_keys)
        templates += (self.shared_gate_key,) if self.shared_gate_key is not None else ()
        return {t.format(layer=layer) for layer in self.spec(config).moe_layers for t in templates}

    def expert_source(self, config: Any, checkpoint: Checkpoint) -> ExpertSource:
        """The checkpoint's experts as plan elements."""
        spec = self.spec(config)
        return ExpertSource(
            checkpoint,
            self.routed,
            self.shared if spec.num_shared else None,
            spec.moe_layers,
            spec.num_routed,
            spec.num_shared,
            spec.hidden,
            spec.intermediate,
        )


def _shared_slices(shared_size: int, intermediate: int) -> int:
    """S, the shared expert's intermediate size in routed-expert units; InvalidArgument unless whole."""
    if shared_size % intermediate:
        raise InvalidArgument(
            f"shared expert intermediate size {shared_size} is not a multiple of the routed experts' "
            f"{intermediate}; such a shared expert cannot be planned as slices"
        )
    return shared_size // intermediate


def _sparse_layers(config: Any) -> tuple[int, ...]:
    """Qwen2-/Qwen3-MoE: decoder layers with a MoE block (as their decoder layers decide)."""
    return tuple(
        i
        for i in range(int(config.num_hidden_layers))
        if i not in config.mlp_only_layers
        and config.num_experts > 0
        and (i + 1) % config.decoder_sparse_step == 0
    )


def _softmax(
    renormalise: Callable[[Any], bool], router_key: str
) -> Callable[[Any, MoeSpec, Checkpoint, int], Router]:
    def make(config: Any, spec: MoeSpec, checkpoint: Checkpoint, layer: int) -> Router:
        weight = checkpoint.read(router_key.format(layer=layer), (spec.num_routed, spec.hidden))
        return SoftmaxTopK(weight, spec.top_k, renormalise(config))

    return make


def _every_layer(config: Any) -> tuple[int, ...]:
    """Mixtral, OLMoE, Granite-MoE: every decoder layer has a MoE block."""
    return tuple(range(int(config.num_hidden_layers)))


def _after_first_dense(config: Any) -> tuple[int, ...]:
    """DeepSeek-V3: the layers after the first `first_k_dense_replace` dense ones."""
    return tuple(range(int(config.first_k_dense_replace), int(config.num_hidden_layers)))


@dataclass(frozen=True)
class SpecReader:
    """Reads a family's MoeSpec from its config: which attributes hold the shape (every family keeps the
    top-k in `num_experts_per_tok` and the hidden size in `hidden_size`)."""

    experts: str
    """Routed experts per MoE layer."""
    intermediate: str
    """One routed expert's intermediate size."""
    layers: Callable[[Any], tuple[int, ...]] = _every_layer
    """The decoder layers with a MoE block."""
    shared_size: str | None = None
    """The shared expert's intermediate size, planned as that many routed-size slices (Qwen2-MoE)."""
    shared_count: str | None = None
    """Shared experts of the routed size, one slice each (DeepSeek-V3)."""

    def __call__(self, config: Any) -> MoeSpec:
        inter = int(getattr(config, self.intermediate))
        shared = 0
        if self.shared_size is not None:
            shared = _shared_slices(int(getattr(config, self.shared_size)), inter)
        elif self.shared_count is not None:
            shared = int(getattr(config, self.shared_count))
        experts = getattr(config, self.experts)
        return MoeSpec(
            self.layers(config), experts, config.num_experts_per_tok, shared, config.hidden_size, inter
        )


_MIXTRAL_SPEC = SpecReader("num_local_experts", "intermediate_size")
_QWEN2_SPEC = SpecReader(
    "num_experts", "moe_intermediate_size", _sparse_layers, shared_size="shared_expert_intermediate_size"
)
_QWEN3_SPEC = SpecReader("num_experts", "moe_intermediate_size", _sparse_layers)
_OLMOE_SPEC = SpecReader("num_experts", "intermediate_size")
_DEEPSEEK_V3_SPEC = SpecReader(
    "n_routed_experts", "moe_intermediate_size", _after_first_dense, shared_count="n_shared_experts"
)


def _deepseek_v3_router(config: Any, spec: MoeSpec, checkpoint: Checkpoint, layer: int) -> Router:
    weight = checkpoint.read(_MLP_GATE.format(layer=layer), (spec.num_routed, spec.hidden))
    bias = checkpoint.read(f"model.layers.{layer}.mlp.gate.e_score_correction_bias", (spec.num_routed,))
    return GroupedSigmoidTopK(
        weight,
        bias,
        spec.top_k,
        int(config.n_group),
        int(config.topk_group),
        bool(config.norm_topk_prob),
        float(config.routed_scaling_factor),
    )


_GATE_DOWN_UP = ("gate_proj", "down_proj", "up_proj")
_QWEN_EXPERTS = PerExpert("model.layers.{layer}.mlp.experts.{expert}.{name}.weight", _GATE_DOWN_UP)
_MLP_GATE = "model.layers.{layer}.mlp.gate.weight"


def _always(config: Any) -> bool:
    return True


def _norm_topk(config: Any) -> bool:
    return bool(config.norm_topk_prob)


def _mixtral() -> ModelAdapter:
    from transformers import MixtralConfig, MixtralForCausalLM

    router = "model.layers.{layer}.block_sparse_moe.gate.weight"
    return ModelAdapter(
        model_type="mixtral",
        model_class=MixtralForCausalLM,
        config_class=MixtralConfig,
        spec=_MIXTRAL_SPEC,
        routed=PerExpert(
            "model.layers.{layer}.block_sparse_moe.experts.{expert}.{name}.weight", ("w1", "w2", "w3")
        ),
        router_key=router,
        make_router=_softmax(_always, router),
    )


def _qwen2_moe() -> ModelAdapter:
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    return ModelAdapter(
        model_type="qwen2_moe",
        model_class=Qwen2MoeForCausalLM,
        config_class=Qwen2MoeConfig,
        spec=_QWEN2_SPEC,
        routed=_QWEN_EXPERTS,
        router_key=_MLP_GATE,
        make_router=_softmax(_norm_topk, _MLP_GATE),
        shared=SharedMlp("model.layers.{layer}.mlp.shared_expert.{name}.weight"),
        shared_gate_key="model.layers.{layer}.mlp.shared_expert_gate.weight",
    )


def _qwen3_moe() -> ModelAdapter:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    return ModelAdapter(
        model_type="qwen3_moe",
        model_class=Qwen3MoeForCausalLM,
        config_class=Qwen3MoeConfig,
        spec=_QWEN3_SPEC,
        routed=_QWEN_EXPERTS,
        router_key=_MLP_GATE,
        make_router=_softmax(_norm_topk, _MLP_GATE),
    )


def _olmoe() -> ModelAdapter:
    from transformers import OlmoeConfig, OlmoeForCausalLM

    return ModelAdapter(
        model_type="olmoe",
        model_class=OlmoeForCausalLM,
        config_class=OlmoeConfig,
        spec=_OLMOE_SPEC,
        routed=_QWEN_EXPERTS,
        router_key=_MLP_GATE,
        make_router=_softmax(_norm_topk, _MLP_GATE),
    )


def _granitemoe() -> ModelAdapter:
    from transformers import GraniteMoeConfig, GraniteMoeForCausalLM

    router = "model.layers.{layer}.block_sparse_moe.router.layer.weight"
    return ModelAdapter(
        model_type="granitemoe",
        model_class=GraniteMoeForCausalLM,
        config_class=GraniteMoeConfig,
        spec=_MIXTRAL_SPEC,
        routed=Fused(
            "model.layers.{layer}.block_sparse_moe.input_linear.weight",
            "model.layers.{layer}.block_sparse_moe.output_linear.weight",
        ),
        router_key=router,
        make_router=_softmax(_always, router),
        moe_module="block_sparse_moe",
    )


def _deepseek_v3() -> ModelAdapter:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    return ModelAdapter(
        model_type="deepseek_v3",
        model_class=DeepseekV3ForCausalLM,
        config_class=DeepseekV3Config,
        spec=_DEEPSEEK_V3_SPEC,
        routed=_QWEN_EXPERTS,
        router_key=_MLP_GATE,
        make_router=_deepseek_v3_router,
        shared=SharedMlp("model.layers.{layer}.mlp.shared_experts.{name}.weight"),
        router_extra_keys=("model.layers.{layer}.mlp.gate.e_score_correction_bias",),
    )


ADAPTERS: dict[str, Callable[[], ModelAdapter]] = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "olmoe": _olmoe,
    "granitemoe": _granitemoe,
    "deepseek_v3": _deepseek_v3,
}


def adapter_for(model_type: str) -> ModelAdapter:
    """The adapter for a config.json `model_type`; InvalidArgument naming the supported ones."""
    if model_type not in ADAPTERS:
        raise InvalidArgument(f"model_type {model_type!r} is not supported; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[model_type]()


def read_model(directory: Path) -> tuple[ModelAdapter, Any, MoeSpec]:
    """The adapter, transformers config (read offline) and MoE shape of a checkpoint directory;
    CheckpointError without a config.json, InvalidArgument for an unsupported family."""
    checkpoint = Checkpoint(directory)
    adapter = adapter_for(str(checkpoint.config_dict.get("model_type")))
    config = adapter.config_class.from_pretrained(str(checkpoint.directory))  # type: ignore[attr-defined]
    return adapter, config, adapter.spec(config)
