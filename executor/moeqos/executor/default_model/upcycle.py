"""Sparse upcycling: turn a dense Llama-style model into a Mixtral that computes the same function.

Every MLP becomes `num_experts` experts, each an exact copy of it (w1 = gate_proj, w3 = up_proj,
w2 = down_proj), behind a top-k router with random normal weights from a fixed seed. Mixtral
renormalises the top-k router weights to sum to one, so a mix of identical experts equals the dense
MLP whatever the router picks: the upcycled model reproduces the dense one, yet each token now
touches distinct, separately quantizable experts, so quality reacts to per-expert precision.

Shapes: T = tokens, H = hidden size, I = intermediate size, E = experts per layer.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

EXPERT_KEY = "model.layers.{layer}.block_sparse_moe.experts.{expert}.{name}.weight"
ROUTER_KEY = "model.layers.{layer}.block_sparse_moe.gate.weight"
DENSE_MLP_KEY = "model.layers.{layer}.mlp.{name}.weight"
EXPERT_MATRICES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
"""Checkpoint name of each expert matrix -> the dense MLP matrix it copies."""


@dataclass(frozen=True)
class UpcycleRecipe:
    """How to upcycle: the expert count, routing width and the router's seeded initialisation."""

    num_experts: int = 8
    top_k: int = 2
    router_seed: int = 0
    """Seed of the one generator all layers' routers are drawn from, layer 0 first."""
    router_std: float = 0.02
    """Std of the router's normal init. Scaling the router does not change which experts are chosen,
    only how evenly the two chosen ones are weighted; small keeps the weights near 1/top_k."""

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"need 1 <= top_k <= num_experts, got top_k={self.top_k}, E={self.num_experts}")
        if self.router_std <= 0:
            raise ValueError(f"router_std must be positive, got {self.router_std}")


def check_dense(config: LlamaConfig) -> None:
    """Raise ValueError unless `config` is a Llama-style model Mixtral can express (no biases, SiLU)."""
    if config.model_type != "llama":
        raise ValueError(f"expected a dense Llama-style model, got model_type={config.model_type!r}")
    if config.mlp_bias or config.attention_bias:
        raise ValueError(
            "Mixtral has no biases; a dense model with mlp_bias or attention_bias cannot be upcycled"
        )
    if config.hidden_act != "silu":
        raise ValueError(f"Mixtral experts use SiLU, the dense model uses {config.hidden_act!r}")


def mixtral_config(dense: LlamaConfig, recipe: UpcycleRecipe) -> MixtralConfig:
    """The Mixtral config with the dense model's attention, norms, rope and vocabulary, plus experts."""
    check_dense(dense)
    return MixtralConfig(
        vocab_size=dense.vocab_size,
        hidden_size=dense.hidden_size,
        intermediate_size=dense.intermediate_size,
        num_hidden_layers=dense.num_hidden_layers,
        num_attention_heads=dense.num_attention_heads,
        num_key_value_heads=dense.num_key_value_heads or dense.num_attention_heads,
        head_dim=getattr(dense, "head_dim", None) or dense.hidden_size // dense.num_attention_heads,
        hidden_act=dense.hidden_act,
        max_position_embeddings=dense.max_position_embeddings,
        initializer_range=dense.initializer_range,
        rms_norm_eps=dense.rms_norm_eps,
        pad_token_id=dense.pad_token_id,
        bos_token_id=dense.bos_token_id,
        eos_token_id=dense.eos_token_id,
        tie_word_embeddings=dense.tie_word_embeddings,
        sliding_window=None,  # Llama attends to the whole context
        attention_dropout=dense.attention_dropout or 0.0,
        rope_parameters=copy.deepcopy(dense.rope_parameters),
        num_local_experts=recipe.num_experts,
        num_experts_per_tok=recipe.top_k,
        router_jitter_noise=0.0,  # jitter would make routing non-deterministic in training mode
        architectures=["MixtralForCausalLM"],
    )


def router_weights(config: LlamaConfig, recipe: UpcycleRecipe) -> list[torch.Tensor]:
    """One [E, H] fp32 router per layer, drawn in layer order from a generator seeded once."""
    generator = torch.Generator().manual_seed(recipe.router_seed)
    shape = (recipe.num_experts, config.hidden_size)
    return [
        torch.randn(shape, generator=generator) * recipe.router_std for _ in range(config.num_hidden_layers)
    ]


def non_expert_tensors(dense: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The dense model's tensors other than its MLPs, under their (shared Llama/Mixtral) names.

    A tied output head is left out: the checkpoint stores it once, as the embedding.
    """
    tied = dense.config.tie_word_embeddings
    return {
        key: tensor
        for key, tensor in dense.state_dict().items()
        if ".mlp." not in key and not (tied and key == "lm_head.weight")
    }


def layer_checkpoint_tensors(
    dense_state: dict[str, torch.Tensor], layer: int, router: torch.Tensor, num_experts: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """The layer's router and per-expert matrices under Mixtral checkpoint keys (each expert a copy)."""
    yield ROUTER_KEY.format(layer=layer), router
    for expert in range(num_experts):
        for name, dense_name in EXPERT_MATRICES.items():
            weight = dense_state[DENSE_MLP_KEY.format(layer=layer, name=dense_name)]  # [I, H] or [H, I]
            yield EXPERT_KEY.format(layer=layer, expert=expert, name=name), weight.clone()


def upcycle(dense: LlamaForCausalLM, recipe: UpcycleRecipe) -> MixtralForCausalLM:
    """An in-memory Mixtral, in the dense model's dtype, computing the same function as `dense`.

    For checking and measuring, not training: the experts are stride-0 views of the dense MLP weights
    (no copies), shared with `dense`. transformers keeps a layer's experts fused in memory
    (gate_up_proj [E, 2I, H], down_proj [E, H, I]).
    """
    config = mixtral_config(dense.config, recipe)
    with torch.device("meta"):  # parameters arrive below; nothing is allocated or initialised twice
        model = MixtralForCausalLM(config)
    dense_state = dense.state_dict()
    state = {key: tensor for key, tensor in dense_state.items() if ".mlp." not in key}
    for layer, router in enumerate(router_weights(dense.config, recipe)):
        gate = dense_state[DENSE_MLP_KEY.format(layer=layer, name="gate_proj")]  # [I, H]
        up = dense_state[DENSE_MLP_KEY.format(layer=layer, name="up_proj")]  # [I, H]
        down = dense_state[DENSE_MLP_KEY.format(layer=layer, name="down_proj")]  # [H, I]
        prefix = f"model.layers.{layer}.mlp"
        state[f"{prefix}.gate.weight"] = router.to(dense.dtype)  # [E, H]
        state[f"{prefix}.experts.gate_up_proj"] = torch.cat([gate, up]).expand(recipe.num_experts, -1, -1)
        state[f"{prefix}.experts.down_proj"] = down.expand(recipe.num_experts, -1, -1)  # [E, H, I]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config)  # its buffers are derived, not loaded
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"upcycle left tensors unset: {left}")
    return model.eval()
