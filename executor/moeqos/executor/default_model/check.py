"""Reference measurements of a Hugging Face causal LM: logits on a probe and windowed perplexity.

These run the plain transformers model (no moeqos runtime), so they are the yardstick the upcycled
checkpoint is checked against. Shapes: T = tokens, V = vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM


def load_fp32(model_dir: Path) -> nn.Module:
    """A checkpoint for fp32 computation: loaded in its stored dtype, then upcast in place.

    Asking transformers for fp32 directly converts while loading and peaks near 2.6x the fp32 size
    for the default model (6.7 GB); this way the peak stays near the fp32 size (3.9 GB).
    """
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").float().eval()


@torch.inference_mode()
def logits(model: nn.Module, token_ids: Sequence[int]) -> torch.Tensor:
    """fp32 logits of one sequence: [T, V]."""
    ids = torch.tensor([list(token_ids)])  # [1, T]
    return model(input_ids=ids).logits[0].float()  # [T, V]


def max_logit_difference(a: nn.Module, b: nn.Module, token_ids: Sequence[int]) -> float:
    """Largest absolute difference between the two models' logits on `token_ids`."""
    return float((logits(a, token_ids) - logits(b, token_ids)).abs().max())


@torch.inference_mode()
def perplexity(model: nn.Module, token_ids: Sequence[int], context: int) -> tuple[float, int]:
    """Perplexity over consecutive, non-overlapping windows of `context` tokens, and tokens scored.

    Each window predicts its tokens 2..n from the ones before them within the window.
    """
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens, got {context}")
    total_nll, scored = 0.0, 0
    for start in range(0, len(token_ids), context):
        window = list(token_ids[start : start + context])
        if len(window) < 2:
            break
        out = logits(model, window)  # [T, V]
        targets = torch.tensor(window[1:])  # [T-1]
        total_nll += float(nn.functional.cross_entropy(out[:-1], targets, reduction="sum"))
        scored += len(window) - 1
    if scored == 0:
        raise ValueError("need at least 2 tokens to measure perplexity")
    return math.exp(total_nll / scored), scored
