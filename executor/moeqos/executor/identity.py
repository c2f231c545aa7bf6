"""Who is serving: the model's identity (with its fingerprint) and the hardware's."""

from __future__ import annotations

import math
import platform
import socket
from pathlib import Path
from typing import Any

import torch
from moeqos.core.precision import Precision, dense_bytes
from moeqos.core.profile import HardwareIdentity, ModelIdentity
from moeqos.executor.adapters import ModelAdapter, MoeSpec
from moeqos.executor.checkpoint import Checkpoint
from moeqos.executor.moe import MoeBlock
from torch import nn


def model_identity(
    checkpoint: Checkpoint, config: Any, spec: MoeSpec, model: nn.Module, dense: Precision
) -> ModelIdentity:
    """Identity of the loaded model (its dense weights held in `dense`); dense_bytes as served. Its
    layers are the MoE layers, its experts and top_k count shared-expert slices (moeqos.executor.adapters)."""
    return ModelIdentity(
        name=checkpoint.directory.name,
        fingerprint=checkpoint.fingerprint(),
        num_layers=spec.num_layers,
        num_experts=spec.num_experts,
        top_k=spec.per_token,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        vocab_size=int(config.vocab_size),
        dense_bytes=served_dense_bytes(model, dense),
    )


def served_dense_bytes(model: nn.Module, dense: Precision) -> int:
    """moeqos.core.precision.dense_bytes of a loaded model: its parameters are the non-expert weights
    (the experts live in the expert store), the MoE blocks' router weights among them."""
    routers = sum(
        p.numel() for m in model.modules() if isinstance(m, MoeBlock) for p in m.router.parameters()
    )
    return dense_bytes(sum(p.numel() for p in model.parameters()) - routers, routers, dense)


def checkpoint_dense_bytes(
    checkpoint: Checkpoint, adapter: ModelAdapter, config: Any, dense: Precision
) -> int:
    """moeqos.core.precision.dense_bytes of a checkpoint served with its dense weights in `dense`,
    whatever dtype they are stored in: what the executor will hold once it has loaded it (`config`: its
    transformers config)."""
    routers = adapter.router_keys(config)
    expert_keys = adapter.expert_source(config, checkpoint).keys()
    params = router_params = 0
    for key, (shape, _) in checkpoint.meta.items():
        if key in routers:
            router_params += math.prod(shape)
        elif key not in expert_keys:
            params += math.prod(shape)
    return dense_bytes(params, router_params, dense)


def hardware_identity(device: str) -> HardwareIdentity:
    """The execution device, its model name, the host and torch's thread count."""
    return HardwareIdentity(
        device=device,
        device_name=_device_name(device),
        host=socket.gethostname(),
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
    )


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
