"""A torch-light stand-in for ExecutorRuntime that implements moeqos.executor.measurement.Measurable and
nothing else, so the measurement modules can be driven without a model: if they needed more of the
runtime than the Protocol offers, these tests would fail with an AttributeError.

Its "model" routes token t to experts (t % E, (t + 1) % E) in every layer, with hidden states [T, H]
filled with t, and returns all-zero logits (a uniform distribution: perplexity = vocab size). It
records whether each forward step ran inside `exclusive()` and under which plan (`viewing` sets the
calling thread's plan), and which plans `serving` switched to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import HardwareIdentity, ModelIdentity
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.moe import RouteObserver


class FakeBlock:
    """What measurement touches of a MoeBlock: its layer, observer and expert switch."""

    def __init__(self, layer: int) -> None:
        self.layer = layer
        self.observer: RouteObserver | None = None
        self.experts_enabled = True


class FakeRuntime:
    """A Measurable with `num_layers` x `num_experts` experts, top-2 routing and vocabulary `vocab`."""

    def __init__(self, num_layers: int = 2, num_experts: int = 4, vocab: int = 16, hidden: int = 8) -> None:
        self.config = ExecutorConfig(model_dir=Path("fake"), dense_precision=Precision.FP32)
        self.num_layers, self.num_experts, self.shape = num_layers, num_experts, (hidden, 2 * hidden)
        self.model = ModelIdentity("fake", "0" * 16, num_layers, num_experts, 2, hidden, 2 * hidden, vocab)
        self.hardware = HardwareIdentity("cpu", "fake", "host", 1, torch.__version__)
        self.budgets = {"cpu": 1 << 40}
        self.plan = Plan.uniform(num_layers, num_experts, "fp32", "cpu")
        self.context_length = 64
        self.factory: Any = None
        """Not needed by what these tests drive; an AttributeError on None would show it was."""
        self.blocks = [FakeBlock(layer) for layer in range(num_layers)]
        self.steps: list[dict[str, Any]] = []
        """Per forward step: was it inside exclusive(), were the experts on, the plan it computed with."""
        self.switches: list[Plan] = []
        self.decode_steps = 0
        """How many decode steps (fresh KV caches) were asked for."""
        self._exclusive = 0
        self._viewed: Plan | None = None

    def encode(self, prompt: str | list[int]) -> list[int]:
        assert isinstance(prompt, list), "the fake has no tokenizer"
        return list(prompt)

    def forward_logits(self, token_ids: torch.Tensor, cache: Any = None, keep: int = 0) -> torch.Tensor:
        flat = token_ids.reshape(-1)  # [T]
        hidden = flat.float()[:, None].expand(-1, self.shape[0])  # [T, H]
        index = torch.stack([flat % self.num_experts, (flat + 1) % self.num_experts], dim=1)  # [T, 2]
        for block in self.blocks:
            if block.observer is not None:
                block.observer(block.layer, hidden, index)
        on = all(b.experts_enabled for b in self.blocks)
        self.steps.append(
            {"exclusive": self._exclusive > 0, "experts": on, "plan": self._viewed or self.plan}
        )
        length = keep or token_ids.shape[1]
        return torch.zeros(token_ids.shape[0], length, self.model.vocab_size)  # [B, S', V]

    def new_cache(self) -> Any:
        return None

    def layer_inputs(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden = token_ids.float()[..., None].expand(-1, -1, self.shape[0])  # [B, S, H]
        return self.forward_logits(token_ids), [hidden] * self.num_layers

    def logits_from(self, layer: int, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        return self.forward_logits(token_ids)

    def decode_step(self) -> Callable[[list[int]], torch.Tensor]:
        self.decode_steps += 1
        return lambda ids: self.forward_logits(torch.tensor([ids]), keep=1)[0, -1]  # [V]

    def store_stats(self) -> Any:
        raise AssertionError("not driven by these tests")

    def moe_blocks(self) -> list[FakeBlock]:
        return self.blocks

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        self._exclusive += 1
        try:
            yield
        finally:
            self._exclusive -= 1

    @contextmanager
    def serving(self, plan: Plan | None) -> Iterator[None]:
        previous = self.plan
        if plan is None or plan == previous:
            yield
            return
        self.plan = plan
        self.switches.append(plan)
        try:
            yield
        finally:
            self.plan = previous
            self.switches.append(previous)

    @contextmanager
    def alternating(self, plan: Plan) -> Iterator[Callable[[bool], None]]:
        served = self.plan

        def turn(to_plan: bool) -> None:
            self.plan = plan if to_plan else served
            self.switches.append(self.plan)

        try:
            yield turn
        finally:
            turn(False)

    @contextmanager
    def viewing(self, plan: Plan | None) -> Iterator[None]:
        self._viewed = plan
        try:
            yield
        finally:
            self._viewed = None
