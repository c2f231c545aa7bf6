"""moeqos.executor.layer_tail on a plain stack of layers: the capture hooks leave nothing behind, and a
skipped layer is put back even when the pass fails (the family-wide exactness check through the runtime
is tests/executor/test_families.py)."""

from __future__ import annotations

import pytest
import torch
from moeqos.executor.layer_tail import capturing_inputs, skipping
from torch import nn


class _Stack(nn.Module):
    """A decoder-like loop: each layer takes the hidden states first, as transformers' models call them."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_pass_from_a_layer_on_its_captured_input_is_the_whole_pass_and_leaves_no_hooks() -> None:
    torch.manual_seed(0)
    stack, x = _Stack(), torch.randn(2, 4)
    with capturing_inputs(stack.layers, [0, 2]) as inputs:
        whole = stack(x)
    assert sorted(inputs) == [0, 2] and torch.equal(inputs[0], x)
    assert all(not layer._forward_pre_hooks for layer in stack.layers)
    with skipping(stack.layers, 2, inputs[2]):
        assert torch.equal(stack(torch.zeros(2, 4)), whole)  # the skipped layers ignore their input
    assert torch.equal(stack(x), whole)


def test_the_skipped_layers_are_back_after_a_failed_pass() -> None:
    stack = _Stack()
    originals = list(stack.layers)
    with pytest.raises(RuntimeError, match="boom"), skipping(stack.layers, 2, torch.zeros(2, 4)):
        raise RuntimeError("boom")
    assert list(stack.layers) == originals
