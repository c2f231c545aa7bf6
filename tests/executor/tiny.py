"""Shapes and inputs shared by the executor tests (the fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from moeqos.core.plan import Plan
from moeqos.executor.quant import QuantLinear
from safetensors.torch import load_file, save_file
from torch import nn

LAYERS, EXPERTS = 2, 4
"""Shape of the `tiny_dir` checkpoint."""


def fp32_plan(tier: str = "cpu") -> Plan:
    return Plan.uniform(LAYERS, EXPERTS, "fp32", tier)


def prompt_ids(length: int = 12, seed: int = 0, vocab: int = 256) -> torch.Tensor:
    """Random token ids [1, length] avoiding the special ids 0-2."""
    return torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def held_dense_bytes(lm: nn.Module) -> int:
    """What a loaded model's dense part really holds: its parameters at their dtypes, and the dense
    matrices moved into a kernel's layout (`QuantLinear`s in its tree: bf16 projections prepacked for
    oneDNN at load, or re-quantized by a plan), which are no longer parameters."""
    parameters = sum(p.numel() * p.element_size() for p in lm.parameters())
    return parameters + sum(m.nbytes() for m in lm.modules() if isinstance(m, QuantLinear))


EXPERT_KEY = ".block_sparse_moe.experts."


def upcycled(directory: Path) -> Path:
    """The tiny checkpoint in `directory` rewritten with every expert of a layer a copy of its expert 0
    (a sparse-upcycled model, as the default model is); returns `directory`."""
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    for key in list(tensors):
        if EXPERT_KEY in key:
            prefix, rest = key.split(EXPERT_KEY)
            _, name = rest.split(".", 1)
            tensors[key] = tensors[f"{prefix}{EXPERT_KEY}0.{name}"].clone()
    save_file(tensors, str(path), metadata={"format": "pt"})
    return directory
