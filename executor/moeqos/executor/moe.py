"""The MoE block the runtime swaps into every decoder layer in place of transformers' own.

Legend for shape comments: B batch, S sequence, T = B*S tokens, H hidden, E experts, K top-k, N tokens
routed to one expert.

Routing is the family's `Router` (moeqos.executor.routing: fp32 on purpose, each reproducing one
transformers router); shared experts come out of it as experts every token picks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
from moeqos.executor.quant import QuantExpert
from moeqos.executor.routing import Router
from torch import nn

RouteObserver = Callable[[int, torch.Tensor, torch.Tensor], None]
"""Called as observer(layer, hidden [T, H], top_index [T, K]) on every routed batch (profiling)."""


class ExpertRunner(Protocol):
    """What a MoE block needs from the expert store: compute one expert on some tokens, or one token's
    routed experts together (the decode case)."""

    def run(self, layer: int, expert: int, x: torch.Tensor) -> torch.Tensor: ...

    def run_token(
        self, layer: int, experts: list[int], x: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """sum_k weights[0, k] * expert_k(x) for one token x [1, H], weights [1, K] -> [1, H]."""
        ...

    def device_experts(self, layer: int, experts: list[int]) -> list[QuantExpert] | None:
        """The modules of `experts` of `layer` when every one is resident on the device tier as this
        thread's plan has it (the C decode step computes them itself), else None."""
        ...


class MoeBlock(nn.Module):
    """A family's fp32 router plus dispatch of tokens to experts held by an `ExpertRunner`."""

    def __init__(self, layer: int, router: Router, runner: ExpertRunner) -> None:
        super().__init__()
        self.layer = layer
        self.router = router
        self.top_k = router.width
        """Experts each token runs (shared experts included)."""
        self.runner = runner
        self.observer: RouteObserver | None = None
        self.experts_enabled = True
        """False only while profiling the fixed (non-expert) decode cost."""

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert indices [T, K] and their weights [T, K] (fp32), as the family's router gives them."""
        return self.router(flat)  # [T, K], [T, K]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape  # [B, S, H], or [T, H] from the own decode step
        flat = hidden_states if hidden_states.dim() == 2 else hidden_states.reshape(-1, shape[-1])  # [T, H]
        index, weights = self.route(flat)  # [T, K], [T, K]
        if self.observer is not None:
            self.observer(self.layer, flat, index)
        if not self.experts_enabled:
            return torch.zeros_like(hidden_states)
        if flat.shape[0] == 1:
            y = self._one_token(flat, index, weights)  # [1, H]
            return y if hidden_states.dim() == 2 else y.reshape(shape)
        return self._tokens(flat, index, weights).reshape(shape)

    def _tokens(self, flat: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """T > 1 (prefill, a batch's decode step): each expert once on all its tokens, with one host
        read per layer (the per-expert counts) instead of a `unique` and a `where` per expert.

        The T*K (token, slot) pairs are sorted by expert, so expert e's tokens are one contiguous run
        of the gathered rows; outputs go back to their pair's place and each token's K are summed in
        slot order, as the one-token path mixes them (`moeqos.executor.quant.fused.mix`), so a batch's
        row equals its stream's lone step up to the kernels' own row-count dependence.
        """
        tokens, k = index.shape  # T, K
        pairs = index.reshape(-1)  # [T*K], pair p = token p // K, slot p % K
        order = torch.argsort(pairs, stable=True)  # [T*K] pairs grouped by expert
        counts = torch.bincount(pairs).tolist()  # [max id + 1]: the one host read
        rows = flat[order // k]  # [T*K, H] gathered in expert order
        ys, start = [], 0
        for expert, n in enumerate(counts):
            if n:
                ys.append(self.runner.run(self.layer, expert, rows[start : start + n]))  # [N, H]
            start += n
        y = torch.cat(ys)  # [T*K, H] in expert order
        scale = weights.reshape(-1)[order].to(y.dtype)  # [T*K]
        out = torch.empty_like(y)  # [T*K, H] in pair order
        out[order] = y * scale[:, None]
        return out.view(tokens, k, -1).sum(dim=1).to(flat.dtype)  # [T, H]

    def _one_token(self, flat: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The decode case, T = 1: the token's K expert ids read once (K ints, no unique or where) and
        handed to the runner in one call, which computes and mixes them together
        (moeqos.executor.quant.fused)."""
        return self.runner.run_token(self.layer, index[0].tolist(), flat, weights)  # [1, H]


class RoutedBlock(Protocol):
    """What measuring sets on a MoE block (MoeBlock has it): an observer of its routing, and whether
    its experts run."""

    layer: int
    observer: RouteObserver | None
    experts_enabled: bool

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert indices [T, K] and their weights [T, K] of tokens [T, H]."""
        ...


@contextmanager
def observed(blocks: Sequence[RoutedBlock], observer: RouteObserver) -> Iterator[None]:
    """Inside the block, every one of `blocks` calls `observer(layer, hidden [T, H], index [T, K])` on
    each forward pass (the routed experts of each token); afterwards none does."""
    for block in blocks:
        block.observer = observer
    try:
        yield
    finally:
        for block in blocks:
            block.observer = None
