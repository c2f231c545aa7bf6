"""A forward pass that starts at a MoE layer: the layers before it are skipped, their output given.

Measuring what one layer's experts cost the output (moeqos.executor.sensitivity) runs the model once per
layer with only that layer changed; the layers before it compute exactly what the reference pass
computed. So the reference pass keeps the hidden states entering every MoE layer (`layer_inputs`) and
each changed pass starts at its layer from them (`skipping`): on the default model's 30 layers that
skips half of the layers the measurement ran (its stage 0.65-0.67x the time of whole passes), and the
logits are the full pass's bit for bit (the mask, the positions and the layers from there on are
computed as before).

How a layer is skipped: it is swapped, in the decoder's own layer list, for a module that returns the
given hidden states whatever it is called with, so the model's loop (and anything it indexes by layer
position, as Qwen2-MoE's per-layer mask types) is unchanged. Every supported family's decoder layer takes
the hidden states first and returns them as one tensor (transformers 5).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class _Given(nn.Module):
    """Stands in for a skipped decoder layer: returns `hidden` whatever it is called with."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden  # [B, S, H]

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.hidden


@contextmanager
def capturing_inputs(layers: nn.ModuleList, indices: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the block, the yielded dict holds for each decoder layer of `indices` the hidden states
    [B, S, H] that entered it in the latest forward pass (a layer the pass never reached has no entry)."""
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int) -> Any:
        def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured[index] = args[0] if args else kwargs["hidden_states"]

        return grab

    handles = [layers[i].register_forward_pre_hook(hook(i), with_kwargs=True) for i in indices]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def skipping(layers: nn.ModuleList, start: int, hidden: torch.Tensor) -> Iterator[None]:
    """Inside the block decoder layers 0..start-1 of `layers` are skipped and layer `start` receives
    `hidden` [B, S, H] (what they gave on the same tokens, or the pass is not the model's). The layers
    are back afterwards, and on error. Not thread-safe: hold the model lock."""
    originals = [layers[i] for i in range(start)]
    given = _Given(hidden)
    try:
        for i in range(start):
            layers[i] = given
        yield
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
