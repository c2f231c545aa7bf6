"""A preallocated KV cache: per layer one key and one value buffer [B, h, C, d], of which the first W
columns are filled.

Legend for shape comments: B rows (streams), L layers, h KV heads, C capacity (columns allocated), W
width (columns filled), S new tokens, d head dim.

Why not transformers' `DynamicCache`: it concatenates every step, copying each layer's whole cache
(O(W) per token), and its mask and cache machinery runs per step. Here a decode step writes one
column in place (moeqos.executor.fast_decode) and attention reads the filled prefix as a view; the
buffers grow by doubling, so a token costs amortised O(1) copying.

Rows of different lengths share the width by left padding (moeqos.executor.batch_cache keeps their
lengths and the mask). Forward passes the fast decoder does not cover (prefill, other attention
families) run transformers on `as_dynamic()` — a DynamicCache whose layers are views of the filled
columns, no copy — and `absorb` then copies only the columns that pass appended.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

__all__ = ["KvCache"]

MIN_CAPACITY = 64
"""Columns allocated at least, so short generations never regrow."""

_buffer_sets = itertools.count(1)
"""Numbers for `KvCache.buffers`, unique across caches."""


class KvCache:
    """Static key/value buffers for L layers; empty (no buffers) until the first forward pass fills it."""

    def __init__(self) -> None:
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self.buffers = 0
        """A number that changes whenever the key or value buffers are replaced (regrown, restacked,
        filtered), unique across caches: the C decode step re-reads the buffers' addresses only then."""
        self.width = 0
        """Columns filled (W), the same in every layer and row."""

    @property
    def keys(self) -> list[torch.Tensor]:
        """Per layer [B, h, C, d]; empty until filled."""
        return self._keys

    @keys.setter
    def keys(self, buffers: list[torch.Tensor]) -> None:
        self._keys, self.buffers = buffers, next(_buffer_sets)

    @property
    def values(self) -> list[torch.Tensor]:
        """Per layer [B, h, C, d]."""
        return self._values

    @values.setter
    def values(self, buffers: list[torch.Tensor]) -> None:
        self._values, self.buffers = buffers, next(_buffer_sets)

    @property
    def rows(self) -> int:
        return int(self.keys[0].shape[0]) if self.keys else 0

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0

    def get_seq_length(self) -> int:
        """W, as transformers' caches name it."""
        return self.width

    def reserve(self, extra: int) -> None:
        """Make room for `extra` more columns (doubling the capacity when it is short)."""
        needed = self.width + extra
        if needed <= self.capacity:
            return
        capacity = max(MIN_CAPACITY, 2 * needed)
        self.keys = [_regrown(k, self.width, capacity) for k in self.keys]
        self.values = [_regrown(v, self.width, capacity) for v in self.values]

    def filled(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, h, W, d] of `layer` (views of the buffers)."""
        return self.keys[layer][:, :, : self.width], self.values[layer][:, :, : self.width]

    # ----- the transformers path ----------------------------------------------------------------
    def as_dynamic(self) -> Any:
        """A transformers DynamicCache of the filled columns (views: nothing copied) for a forward pass
        the fast decoder does not run; hand it to `absorb` afterwards."""
        from transformers import DynamicCache

        if not self.keys:
            return DynamicCache()  # full (non-sliding) layers, as the buffers are
        return DynamicCache(ddp_cache_data=[self.filled(layer) for layer in range(len(self.keys))])

    def absorb(self, dynamic: Any) -> None:
        """Copy in the columns a forward pass appended to `dynamic` (from `as_dynamic`)."""
        layers = dynamic.layers
        new_width = int(layers[0].keys.shape[2])  # [B, h, W + S, d]
        if not self.keys:  # room for as many tokens again before the first regrowth
            self.keys = [_regrown(layer.keys, 0, 2 * new_width) for layer in layers]
            self.values = [_regrown(layer.values, 0, 2 * new_width) for layer in layers]
        self.reserve(new_width - self.width)
        for layer, source in enumerate(layers):
            self.keys[layer][:, :, self.width : new_width] = source.keys[:, :, self.width :]
            self.values[layer][:, :, self.width : new_width] = source.values[:, :, self.width :]
        self.width = new_width

    # ----- rows ---------------------------------------------------------------------------------
    def append_rows(self, other: KvCache) -> None:
        """Stack `other`'s rows under this cache's, left-padding whichever is narrower with zeros."""
        if not self.keys:
            self.keys, self.values, self.width = other.keys, other.values, other.width
            return
        width = max(self.width, other.width)
        capacity = max(self.capacity, other.capacity, MIN_CAPACITY)
        self.keys = [
            _stacked(a, self.width, b, other.width, width, capacity)
            for a, b in zip(self.keys, other.keys, strict=True)
        ]
        self.values = [
            _stacked(a, self.width, b, other.width, width, capacity)
            for a, b in zip(self.values, other.values, strict=True)
        ]
        self.width = width

    def clear_padding(self, lengths: list[int]) -> None:
        """Zero each row's left padding: the first W - n columns of a row holding n tokens."""
        device = self.keys[0].device
        start = self.width - torch.tensor(lengths, device=device)  # [B]: first real column
        padding = torch.arange(self.width, device=device)[None, :] < start[:, None]  # [B, W]
        with torch.inference_mode():  # the buffers are inference tensors (written by forward passes)
            for buffer in (*self.keys, *self.values):
                buffer[:, :, : self.width].masked_fill_(padding[:, None, :, None], 0)  # [B, h, W, d]

    def keep_rows(self, rows: list[int], cut: int) -> None:
        """Keep only `rows` (in that order) and drop the first `cut` columns (padding in all of them)."""
        index = torch.tensor(rows, device=self.keys[0].device)  # [B']
        self.keys = [_kept(k, index, cut, self.width) for k in self.keys]
        self.values = [_kept(v, index, cut, self.width) for v in self.values]
        self.width -= cut


def _regrown(x: torch.Tensor, width: int, capacity: int) -> torch.Tensor:
    """A [B, h, max(capacity, MIN_CAPACITY, w), d] buffer holding x's first `width` columns."""
    rows, heads, _, dim = x.shape
    out = x.new_empty(rows, heads, max(capacity, MIN_CAPACITY, int(x.shape[2])), dim)
    out[:, :, :width] = x[:, :, :width]
    return out


def _stacked(
    a: torch.Tensor, a_width: int, b: torch.Tensor, b_width: int, width: int, capacity: int
) -> torch.Tensor:
    """[Ba, h, ·, d] and [Bb, h, ·, d] with a_width and b_width filled -> [Ba + Bb, h, capacity, d] with
    each left-padded to `width` filled columns."""
    out = a.new_zeros(a.shape[0] + b.shape[0], a.shape[1], capacity, a.shape[3])
    out[: a.shape[0], :, width - a_width : width] = a[:, :, :a_width]
    out[a.shape[0] :, :, width - b_width : width] = b[:, :, :b_width]
    return out


def _kept(x: torch.Tensor, index: torch.Tensor, cut: int, width: int) -> torch.Tensor:
    """Rows `index` of x [B, h, C, d], its filled columns from `cut` on, in a fresh buffer [B', h, C, d]."""
    out = x.new_empty(len(index), x.shape[1], x.shape[2], x.shape[3])
    out[:, :, : width - cut] = x[index, :, cut:width]
    return out
