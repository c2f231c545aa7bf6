"""One KV cache for a batch of streams of different lengths: left-padded rows, per-row lengths.

Legend for shape comments: B streams in the batch, L layers, h KV heads, W cache width (columns), d head
dim, n a stream's own length.

Row i holds its stream's n_i cached tokens in the last n_i columns; the W - n_i columns before them are
padding that the attention mask hides. A decode step then gives every row its own position id (n_i) and
the mask, which is how transformers itself decodes left-padded batches: the keys a stream attends to
are its own, so its logits are the ones it would get alone (up to floating-point summation order).

Streams join with a cache they prefilled alone (`join`) and leave between steps (`keep`); columns that
have become padding in every row are dropped then, so the width never exceeds the longest stream.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["BatchCache"]


class BatchCache:
    """A transformers `DynamicCache` over the batch plus each row's real length."""

    def __init__(self) -> None:
        self.cache: Any = None
        """The batch's DynamicCache (None while the batch is empty); forward passes extend it."""
        self.lengths: list[int] = []
        """Cached tokens of each row, in row order."""

    @property
    def width(self) -> int:
        """Columns of the cache (W): the longest row's length, padding included for the others."""
        return 0 if self.cache is None else int(self.cache.get_seq_length())

    def __len__(self) -> int:
        return len(self.lengths)

    def join(self, single: Any) -> None:
        """Append a stream's own (batch-1) DynamicCache as the last row, left-padding whichever side
        is shorter so all rows share one width."""
        from transformers import DynamicCache

        length = int(single.get_seq_length())
        if self.cache is None:
            self.cache, self.lengths = single, [length]
            return
        width = max(self.width, length)
        merged = [
            (_joined(old.keys, new.keys, width), _joined(old.values, new.values, width))
            for old, new in zip(self.cache.layers, single.layers, strict=True)
        ]  # L x ([B+1, h, W, d], [B+1, h, W, d])
        self.cache = DynamicCache(ddp_cache_data=merged)
        self.lengths.append(length)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then drop the columns no remaining row uses."""
        if not rows:
            self.cache, self.lengths = None, []
            return
        if rows == list(range(len(self.lengths))):
            return
        index = torch.tensor(rows, device=self.cache.layers[0].keys.device)  # [B']
        self.lengths = [self.lengths[row] for row in rows]
        cut = self.width - max(self.lengths)  # leading columns that are padding in every kept row
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, cut:]  # [B', h, W - cut, d]
            layer.values = layer.values[index, :, cut:]  # [B', h, W - cut, d]

    def step_inputs(self, device: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention mask [B, W + 1] (False on padding) and position ids [B, 1] of one new token
        per row."""
        lengths = torch.tensor(self.lengths, device=device)  # [B]
        columns = torch.arange(self.width + 1, device=device)  # [W + 1]
        mask = columns[None, :] >= (self.width - lengths)[:, None]  # [B, W + 1]
        return mask.long(), lengths[:, None]  # [B, W + 1], [B, 1]

    def advanced(self) -> None:
        """Record that a forward pass appended one token to every row."""
        self.lengths = [n + 1 for n in self.lengths]


def _joined(batch: torch.Tensor, row: torch.Tensor, width: int) -> torch.Tensor:
    """[B, h, w, d] and [1, h, n, d] left-padded with zeros to `width` columns and stacked: [B+1, h, W, d]."""
    return torch.cat([_left_pad(batch, width), _left_pad(row, width)])


def _left_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    """[b, h, w, d] -> [b, h, width, d], zeros in front."""
    return F.pad(x, (0, 0, width - x.shape[2], 0))
