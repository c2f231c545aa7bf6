"""Build the transformers model for a checkpoint without its experts, and swap in `MoeBlock`s.

The skeleton is made on the meta device (no memory), its stock MoE blocks are replaced by the
runtime's own (explicit module swap), and only then are the non-expert tensors read from safetensors
one by one onto the execution device in the dense precision. Expert tensors are never read here: the
expert store reads each one when a plan asks for it, so two full copies of the weights never exist.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from moeqos.core.precision import Precision
from moeqos.executor.adapters import ModelAdapter
from moeqos.executor.checkpoint import Checkpoint
from moeqos.executor.moe import ExpertRunner, MoeBlock, RouteObserver, observed
from torch import nn

TORCH_DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


def load_config(checkpoint: Checkpoint, adapter: ModelAdapter) -> Any:
    """The transformers config object of the checkpoint (read from its config.json, offline)."""
    return adapter.config_class.from_pretrained(str(checkpoint.directory))  # type: ignore[attr-defined]


def build_model(
    checkpoint: Checkpoint,
    adapter: ModelAdapter,
    config: Any,
    device: str,
    dense: Precision,
    runner: ExpertRunner,
) -> nn.Module:
    """The causal LM on `device`: dense weights loaded in `dense` precision, MoE blocks swapped."""
    with torch.device("meta"):
        model: Any = adapter.model_class(config)
    decoders = adapter.layers(model)
    for layer, index in enumerate(adapter.spec(config).moe_layers):
        router = adapter.router(config, checkpoint, index).to(device)
        setattr(decoders[index], adapter.moe_module, MoeBlock(layer, router, runner))
    _load_dense(model, checkpoint, device, TORCH_DTYPES[dense])
    if getattr(config, "tie_word_embeddings", False):
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    _rebuild_buffers(model, config, device)
    return model.eval()


def moe_blocks(model: nn.Module, adapter: ModelAdapter) -> list[MoeBlock]:
    """The swapped-in MoE block of every MoE layer, in layer order (dense-MLP layers have none)."""
    blocks = [layer.get_submodule(adapter.moe_module) for layer in adapter.layers(model)]
    assert any(isinstance(b, MoeBlock) for b in blocks), "the MoE blocks were not swapped"
    return [b for b in blocks if isinstance(b, MoeBlock)]


def observing(
    model: nn.Module, adapter: ModelAdapter, observer: RouteObserver
) -> AbstractContextManager[None]:
    """Inside the block, every MoE block of `model` calls `observer(layer, hidden [N, H], index [N, k])`
    on each forward pass (the routed experts of each token); afterwards none does."""
    return observed(moe_blocks(model, adapter), observer)


def _load_dense(model: nn.Module, checkpoint: Checkpoint, device: str, dtype: torch.dtype) -> None:
    """Read every remaining meta parameter from the checkpoint (checked for shape) onto `device`."""
    for name, param in list(model.named_parameters()):
        if param.is_meta:
            tensor = checkpoint.read(name, tuple(param.shape)).to(device=device, dtype=dtype)
            _set_parameter(model, name, nn.Parameter(tensor, requires_grad=False))


def _set_parameter(model: nn.Module, name: str, param: nn.Parameter) -> None:
    owner_path, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    setattr(owner, leaf, param)


def _rebuild_buffers(model: nn.Module, config: Any, device: str) -> None:
    """Non-persistent buffers (rotary frequencies) were made on meta: make their modules again."""
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            with torch.device(device):
                fresh = type(module)(config=config)
            _set_module(model, name, fresh)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    owner_path, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    setattr(owner, leaf, module)
