"""Shapes and inputs shared by the executor tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import torch
from moeqos.core.plan import Plan

LAYERS, EXPERTS = 2, 4
"""Shape of the `tiny_dir` checkpoint."""


def fp32_plan(tier: str = "cpu") -> Plan:
    return Plan.uniform(LAYERS, EXPERTS, "fp32", tier)


def prompt_ids(length: int = 12, seed: int = 0, vocab: int = 256) -> torch.Tensor:
    """Random token ids [1, length] avoiding the special ids 0-2."""
    return torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(seed))
