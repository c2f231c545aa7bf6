"""Prefill of several joining streams in one forward pass: their prompts left-padded into one batch.

Legend for shape comments: A streams prefilled together, L the longest of their prompts, V vocabulary.

Streams often join together: a burst of requests arrives, or streams that started together finish
together and their clients send the next ones. Read one a step, each prompt costs a forward pass of
its own, and on a CPU a short prompt's pass costs about what a whole batch's decode step costs (most
of it is per-pass: dispatch, the head, every expert's weights read), while the others wait for it.
Read together, A prompts cost about one pass.

Rows are left-padded as the batch's KV cache lays them out (moeqos.executor.batch_cache): row i's
n_i tokens sit in the last n_i columns, the attention mask hides the padding and each real token gets
its own position (0..n_i - 1), so a row's keys, values and last logits are the ones its prompt gets
alone (up to floating-point summation order). The padding columns' keys and values are zeroed after
the pass: whatever the pass computed there stays out of every later step's attention for good.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from moeqos.executor.kv_cache import KvCache

__all__ = ["PrefillModel", "prefill_together"]


class PrefillModel(Protocol):
    """The forward pass the prefill needs (moeqos.executor.batch_scheduler.BatchModel extends it)."""

    def forward_logits(
        self,
        token_ids: torch.Tensor,
        cache: Any = None,
        keep: int = 0,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def prefill_together(
    model: PrefillModel, prompts: Sequence[list[int]], device: str
) -> tuple[torch.Tensor, KvCache, list[int]]:
    """Read `prompts` (each non-empty) into one fresh KV cache of left-padded rows, one forward pass.

    Returns the last position's logits [A, V] of each prompt, the cache (A rows, L columns) and each
    row's length. Prompts of one length need no padding: the pass is exactly each prompt's own
    (one prompt: exactly the single-stream prefill)."""
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    tokens = torch.tensor([[p[0]] * (width - len(p)) + p for p in prompts])  # [A, L]
    mask = positions = None
    if min(lengths) < width:
        columns = torch.arange(width, device=device)  # [L]
        start = width - torch.tensor(lengths, device=device)[:, None]  # [A, 1]: first real column
        mask = (columns[None, :] >= start).long()  # [A, L]
        positions = (columns[None, :] - start).clamp(min=0)  # [A, L]
    cache = KvCache()
    logits = model.forward_logits(tokens, cache, keep=1, attention_mask=mask, position_ids=positions)
    if mask is not None:
        cache.clear_padding(lengths)
    return logits[:, -1], cache, lengths  # [A, V]
