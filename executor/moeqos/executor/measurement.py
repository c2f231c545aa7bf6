"""The seam between the runtime and what measures it: `Measurable` is everything profiling, evaluation
and step timing (moeqos.executor.profiling, sensitivity, evaluation, costs, disk_calibration, step_timing,
step_profile, which is also handed the model's modules) need from a runtime, so they never touch its
locks or internals. ExecutorRuntime implements it; a test drives the measurements through a small fake
(tests/executor/fake_runtime.py).

The two locks behind the runtime stay its own business; measurement asks for what they guarantee:
`exclusive()` (no request's forward step runs inside the block), `serving(plan)` (that plan and
no other is served inside the block), `alternating(plan)` (two plans served by turns, no other
switch between) and `viewing(plan)` (the calling thread alone computes with that plan; everyone else
keeps the plan served).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch
from moeqos.core.plan import Plan
from moeqos.core.profile import HardwareIdentity, ModelIdentity
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.dense_part import DensePart
from moeqos.executor.generation import Step
from moeqos.executor.moe import RoutedBlock
from moeqos.executor.quant import QuantExpert
from moeqos.executor.store import StoreStats
from moeqos.executor.variants import VariantKey


class ExpertVariants(Protocol):
    """What measurement needs from the variant factory: an expert's weights and its variants."""

    def read_weights(self, layer: int, expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The full-precision (w1, w2, w3) of one expert from the checkpoint."""
        ...

    def build(self, key: VariantKey, device: str) -> QuantExpert:
        """The variant `key` on `device` (quantized or taken from a cache)."""
        ...

    def retire(self, key: VariantKey, module: QuantExpert) -> None:
        """Give back a variant built with `build` (the factory may keep it cached)."""
        ...

    def ensure_file(self, key: VariantKey, device: str | None = None) -> Path:
        """The variant's file in the variant cache, written if missing."""
        ...

    def load(self, key: VariantKey, device: str) -> tuple[QuantExpert, int]:
        """Read the variant's file onto `device`: the module and the bytes read."""
        ...


class Measurable(Protocol):
    """What measuring a runtime needs from it: identity and shape, the plan and budgets, forward steps,
    the MoE blocks (to observe routing or switch experts off), and the two guarantees of its locks."""

    @property
    def config(self) -> ExecutorConfig:
        """The runtime's settings (device, dense precision, host policy, disk tier)."""
        ...

    @property
    def num_layers(self) -> int: ...

    @property
    def num_experts(self) -> int: ...

    @property
    def shape(self) -> tuple[int, int]:
        """(hidden, intermediate) of every expert."""
        ...

    @property
    def model(self) -> ModelIdentity: ...

    @property
    def hardware(self) -> HardwareIdentity: ...

    @property
    def budgets(self) -> Mapping[str, int]:
        """Bytes of experts each tier may hold, in tier order."""
        ...

    @property
    def plan(self) -> Plan:
        """The plan served now."""
        ...

    @property
    def context_length(self) -> int: ...

    def validate_plan(self, plan: Plan) -> None:
        """InvalidArgument (shape, tiers, group size) or OverBudget unless `plan` can run here."""
        ...

    @property
    def factory(self) -> ExpertVariants: ...

    @property
    def dense(self) -> DensePart:
        """The attention projections and the head (moeqos.executor.dense_part), to build them aside."""
        ...

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt, checked against the vocabulary."""
        ...

    def forward_logits(self, token_ids: torch.Tensor, cache: Any = None, keep: int = 0) -> torch.Tensor:
        """Logits [B, S', V] for token ids [B, S]; one forward step (S' = keep if keep else S)."""
        ...

    def new_cache(self) -> Any:
        """An empty KV cache for `forward_logits`."""
        ...

    def layer_inputs(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [B, S, V] for token ids [B, S] and the hidden states [B, S, H] entering each MoE layer
        (in layer order), from one forward pass."""
        ...

    def logits_from(self, layer: int, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] of a forward pass over token ids [B, S] that starts at MoE layer `layer` with
        `hidden` [B, S, H] (`layer_inputs`' on the same tokens: then the whole pass's logits)."""
        ...

    def decode_step(self) -> Step:
        """A decode step with its own fresh KV cache (new token ids -> logits [V] of the last position),
        for timing a greedy decode (moeqos.executor.generation.time_decode)."""
        ...

    def store_stats(self) -> StoreStats:
        """The expert store's counters (disk-tier hits and misses, bytes moved)."""
        ...

    def moe_blocks(self) -> Sequence[RoutedBlock]:
        """The MoE block of every layer, in layer order (their `observer` and `experts_enabled` may be
        set inside `exclusive()`, and must be put back before leaving it)."""
        ...

    def exclusive(self) -> AbstractContextManager[None]:
        """Inside the block no other thread runs a forward step (re-entrant)."""
        ...

    def alternating(self, plan: Plan) -> AbstractContextManager[Callable[[bool], None]]:
        """Serve `plan` (turn(True)) and the plan served now (turn(False)) by turns inside the block,
        both plans' experts and dense matrices resident; OverBudget before anything is built when
        `plan`'s own experts do not fit beside the served plan's. The plan before is served again
        afterwards."""
        ...

    def serving(self, plan: Plan | None) -> AbstractContextManager[None]:
        """Serve `plan` inside the block (None: keep the current one) with no other plan switch
        interleaving, then restore the previous plan."""
        ...

    def viewing(self, plan: Plan | None) -> AbstractContextManager[None]:
        """Compute with `plan` inside the block on the calling thread only (None: the plan served, with
        no switch interleaving); every other request keeps the plan served."""
        ...
