"""One KV cache for a batch of streams of different lengths: left-padded rows, per-row lengths.

Legend for shape comments: B streams in the batch, W cache width (columns), n a stream's own length.

Row i holds its stream's n_i cached tokens in the last n_i columns; the W - n_i columns before them are
padding that the attention mask hides. A decode step then gives every row its own position id (n_i) and
the mask, which is how transformers itself decodes left-padded batches: the keys a stream attends to
are its own, so its logits are the ones it would get alone (up to floating-point summation order).

The rows live in one preallocated `KvCache` (moeqos.executor.kv_cache), which the runtime's decode
step writes in place. Streams join with a cache they prefilled alone (`join`) and leave between steps
(`keep`); columns that have become padding in every row are dropped then, so the width never exceeds
the longest stream.
"""

from __future__ import annotations

import torch
from moeqos.executor.kv_cache import KvCache

__all__ = ["BatchCache"]


class BatchCache:
    """A `KvCache` over the batch plus each row's real length."""

    def __init__(self) -> None:
        self.cache: KvCache | None = None
        """The batch's rows (None while the batch is empty); forward passes extend it."""
        self.lengths: list[int] = []
        """Cached tokens of each row, in row order."""

    @property
    def width(self) -> int:
        """Columns of the cache (W): the longest row's length, padding included for the others."""
        return 0 if self.cache is None else self.cache.width

    def __len__(self) -> int:
        return len(self.lengths)

    def join(self, rows: KvCache, lengths: list[int] | None = None) -> None:
        """Append the rows of a cache prefilled apart (a stream's own one-row cache, or left-padded rows
        of `lengths` tokens each: moeqos.executor.batch_prefill) as the last rows, left-padding whichever
        side is shorter so all rows share one width."""
        if self.cache is None:
            self.cache = rows
        else:
            self.cache.append_rows(rows)
        self.lengths += [rows.width] * rows.rows if lengths is None else lengths

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then drop the columns no remaining row uses."""
        if not rows:
            self.cache, self.lengths = None, []
            return
        if rows == list(range(len(self.lengths))) or self.cache is None:
            return
        self.lengths = [self.lengths[row] for row in rows]
        self.cache.keep_rows(rows, self.width - max(self.lengths))

    def step_inputs(self, device: str) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The attention mask [B, W + 1] (False on padding; None when no row has padding) and position
        ids [B, 1] of one new token per row."""
        lengths = torch.tensor(self.lengths, device=device)  # [B]
        if min(self.lengths) == self.width:
            return None, lengths[:, None]
        columns = torch.arange(self.width + 1, device=device)  # [W + 1]
        mask = columns[None, :] >= (self.width - lengths)[:, None]  # [B, W + 1]
        return mask.long(), lengths[:, None]  # [B, W + 1], [B, 1]

    def advanced(self) -> None:
        """Record that a forward pass appended one token to every row."""
        self.lengths = [n + 1 for n in self.lengths]
