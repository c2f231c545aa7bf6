"""Where one expert's three matrices lie in a checkpoint, per family layout, read one expert at a time.

Legend: H hidden, I one expert's intermediate size, E routed experts, S shared-expert slices.
An expert is (w1 [I, H] gate, w2 [H, I] down, w3 [I, H] up): y = w2 (silu(w1 x) * w3 x).

Layouts: one tensor per expert and matrix (Mixtral `w1/w2/w3`; Qwen, OLMoE, DeepSeek
`gate_proj/down_proj/up_proj`), or every expert of a layer fused in two tensors (Granite-MoE:
`input_linear` [E, 2I, H], gate rows then up rows, and `output_linear` [E, H, I]). A shared expert of
S*I intermediate rows is read as S slices of I rows: SwiGLU acts on each intermediate row alone, so
the shared MLP is exactly the sum of its slices, and each slice has a routed expert's shape (the plan,
the quantizer and the byte contract treat it as one more expert).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from moeqos.executor.checkpoint import Checkpoint

Weights = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(w1 [I, H], w2 [H, I], w3 [I, H])"""


class RoutedLayout(Protocol):
    """How a family stores its routed experts."""

    def keys(self, layer: int, experts: int) -> set[str]:
        """Every checkpoint key holding the `experts` routed experts of decoder layer `layer`."""
        ...

    def check(self, checkpoint: Checkpoint, layer: int, shape: tuple[int, int, int]) -> None:
        """CheckpointError unless every routed-expert tensor of decoder layer `layer` is present and
        shaped for `shape` (E, H, I); reads no tensor data."""
        ...

    def read(self, checkpoint: Checkpoint, layer: int, expert: int, shape: tuple[int, int, int]) -> Weights:
        """Expert `expert` of decoder layer `layer`; `shape` is (E, H, I), checked against the tensors."""
        ...


@dataclass(frozen=True)
class PerExpert:
    """One tensor per expert and matrix; `template` has fields layer, expert, name."""

    template: str
    names: tuple[str, str, str]
    """Names of (w1 gate, w2 down, w3 up) in the template."""

    def keys(self, layer: int, experts: int) -> set[str]:
        return {
            self.template.format(layer=layer, expert=e, name=n) for e in range(experts) for n in self.names
        }

    def check(self, checkpoint: Checkpoint, layer: int, shape: tuple[int, int, int]) -> None:
        experts, hidden, inter = shape
        for expert in range(experts):
            for name, dims in zip(
                self.names, ((inter, hidden), (hidden, inter), (inter, hidden)), strict=True
            ):
                checkpoint.check(self.template.format(layer=layer, expert=expert, name=name), dims)

    def read(self, checkpoint: Checkpoint, layer: int, expert: int, shape: tuple[int, int, int]) -> Weights:
        _, hidden, inter = shape
        k1, k2, k3 = (self.template.format(layer=layer, expert=expert, name=n) for n in self.names)
        up, down = (inter, hidden), (hidden, inter)
        return checkpoint.read(k1, up), checkpoint.read(k2, down), checkpoint.read(k3, up)


@dataclass(frozen=True)
class Fused:
    """Every expert of a layer in two tensors: `input_key` [E, 2I, H] (gate rows, then up rows) and
    `output_key` [E, H, I]; both have the field layer. One expert's slice is read, never the rest."""

    input_key: str
    output_key: str

    def keys(self, layer: int, experts: int) -> set[str]:
        return {self.input_key.format(layer=layer), self.output_key.format(layer=layer)}

    def check(self, checkpoint: Checkpoint, layer: int, shape: tuple[int, int, int]) -> None:
        experts, hidden, inter = shape
        checkpoint.check(self.input_key.format(layer=layer), (experts, 2 * inter, hidden))
        checkpoint.check(self.output_key.format(layer=layer), (experts, hidden, inter))

    def read(self, checkpoint: Checkpoint, layer: int, expert: int, shape: tuple[int, int, int]) -> Weights:
        experts, hidden, inter = shape
        one = (slice(expert, expert + 1),)
        gate_up = checkpoint.read_slice(
            self.input_key.format(layer=layer), (experts, 2 * inter, hidden), one
        )[0]
        down = checkpoint.read_slice(self.output_key.format(layer=layer), (experts, hidden, inter), one)[0]
        return gate_up[:inter], down, gate_up[inter:]  # [I, H], [H, I], [I, H]


@dataclass(frozen=True)
class SharedMlp:
    """A layer's shared expert: `template` (fields layer, name) with `names` for (gate, down, up), of
    S*I intermediate rows, read as S slices of I."""

    template: str
    names: tuple[str, str, str] = ("gate_proj", "down_proj", "up_proj")

    def keys(self, layer: int) -> set[str]:
        return {self.template.format(layer=layer, name=n) for n in self.names}

    def check(self, checkpoint: Checkpoint, layer: int, shape: tuple[int, int, int]) -> None:
        """CheckpointError unless the shared expert of decoder layer `layer` has `shape` (S, H, I)."""
        slices, hidden, inter = shape
        dims = ((slices * inter, hidden), (hidden, slices * inter), (slices * inter, hidden))
        for name, expected in zip(self.names, dims, strict=True):
            checkpoint.check(self.template.format(layer=layer, name=name), expected)

    def read(self, checkpoint: Checkpoint, layer: int, part: int, shape: tuple[int, int, int]) -> Weights:
        """Slice `part` of S; `shape` is (S, H, I)."""
        slices, hidden, inter = shape
        k1, k2, k3 = (self.template.format(layer=layer, name=n) for n in self.names)
        rows = (slice(part * inter, (part + 1) * inter),)
        cols = (slice(None), rows[0])
        up, down = (slices * inter, hidden), (hidden, slices * inter)
        w1 = checkpoint.read_slice(k1, up, rows)  # [I, H]
        w2 = checkpoint.read_slice(k2, down, cols)  # [H, I]
        return w1, w2, checkpoint.read_slice(k3, up, rows)


@dataclass(frozen=True)
class ExpertSource:
    """The experts of one checkpoint as plan elements: plan layer l is decoder layer `moe_layers[l]`;
    plan experts 0..E-1 are the routed ones, E..E+S-1 the shared expert's slices."""

    checkpoint: Checkpoint
    routed: RoutedLayout
    shared: SharedMlp | None
    moe_layers: tuple[int, ...]
    num_routed: int
    num_shared: int
    hidden: int
    intermediate: int

    def read(self, layer: int, expert: int) -> Weights:
        """(w1 [I, H], w2 [H, I], w3 [I, H]) of plan element (layer, expert), checked for shape."""
        decoder = self.moe_layers[layer]
        if expert < self.num_routed:
            shape = (self.num_routed, self.hidden, self.intermediate)
            return self.routed.read(self.checkpoint, decoder, expert, shape)
        assert self.shared is not None, f"expert {expert} is past the {self.num_routed} routed ones"
        shape = (self.num_shared, self.hidden, self.intermediate)
        return self.shared.read(self.checkpoint, decoder, expert - self.num_routed, shape)

    def check(self) -> None:
        """CheckpointError unless every expert tensor is present and shaped as the config says."""
        for decoder in self.moe_layers:
            self.routed.check(self.checkpoint, decoder, (self.num_routed, self.hidden, self.intermediate))
            if self.shared is not None:
                self.shared.check(self.checkpoint, decoder, (self.num_shared, self.hidden, self.intermediate))

    def keys(self) -> set[str]:
        """Every checkpoint key holding expert weights (routed and shared)."""
        found: set[str] = set()
        for decoder in self.moe_layers:
            found |= self.routed.keys(decoder, self.num_routed)
            found |= self.shared.keys(decoder) if self.shared is not None else set()
        return found
