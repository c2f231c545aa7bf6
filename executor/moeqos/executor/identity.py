"""Who is serving: the model's identity (with its fingerprint) and the hardware's."""

from __future__ import annotations

import platform
import socket
from pathlib import Path
from typing import Any

import torch
from moeqos.core.profile import HardwareIdentity, ModelIdentity
from moeqos.executor.checkpoint import Checkpoint
from torch import nn


def model_identity(
    checkpoint: Checkpoint, config: Any, model: nn.Module, top_k: int, experts: int
) -> ModelIdentity:
    """Identity of the loaded model; dense_bytes counts the non-expert weights as served."""
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return ModelIdentity(
        name=checkpoint.directory.name,
        fingerprint=checkpoint.fingerprint(),
        num_layers=int(config.num_hidden_layers),
        num_experts=experts,
        top_k=top_k,
        hidden_size=int(config.hidden_size),
        intermediate_size=int(config.intermediate_size),
        vocab_size=int(config.vocab_size),
        dense_bytes=dense_bytes,
    )


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
