"""Recovering 4-bit codes from a device kernel's packed layout, without knowing that layout.

torch's int4 packing ops (tinygemm on CUDA, the CPU port with its ISA-dependent blocking) document their
output only as "packed"; what they do is place each of the N*K input nibbles somewhere in N*K/2 bytes.
We learn where by packing probe matrices whose codes are the base-16 digits of each element's index:
digit d of the nibble found at output position p is digit d of the index it came from. That permutation
depends only on the shape (and the machine), so it is computed once per shape and the last few are
cached (an index costs 8 bytes per weight: 14 MB for a 1536x576 matrix).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import Tensor

PackFn = Callable[[Tensor], Tensor]
"""uint8 codes [N, K] in 0..15 (on the kernel's device) -> the kernel's packed tensor."""


def nibbles(packed: Tensor) -> Tensor:
    """Every 4-bit nibble of a packed tensor's bytes, low nibble first: uint8 [2 * bytes]."""
    raw = packed.contiguous().view(torch.uint8).flatten()  # [bytes]
    return torch.stack([raw & 0x0F, raw >> 4], dim=1).flatten()  # [2 * bytes]


def unpack_codes(packed: Tensor, pack: PackFn, rows: int, cols: int) -> Tensor:
    """uint8 codes [rows, cols] that `pack` turned into `packed` (same device as `packed`)."""
    source = source_index(pack, rows, cols, packed.device)  # [N*K]
    codes = torch.empty(rows * cols, dtype=torch.uint8, device=packed.device)  # [N*K]
    codes[source] = nibbles(packed)
    return codes.view(rows, cols)


@lru_cache(maxsize=4)
def source_index(pack: PackFn, rows: int, cols: int, device: torch.device) -> Tensor:
    """For each nibble position of `pack`'s output, the flat [N, K] index of the code stored there."""
    count = rows * cols
    index = torch.arange(count, dtype=torch.int64, device=device)  # [N*K]
    source = torch.zeros(count, dtype=torch.int64, device=device)  # [N*K]
    for digit in range(max(1, ((count - 1).bit_length() + 3) // 4)):
        probe = ((index >> (4 * digit)) & 0x0F).to(torch.uint8).view(rows, cols)  # [N, K]
        found = nibbles(pack(probe))
        if found.numel() != count:
            raise RuntimeError(f"packed layout holds {found.numel()} nibbles for a {rows}x{cols} weight")
        source |= found.to(torch.int64) << (4 * digit)
    if not torch.equal(source.sort().values, index):
        raise RuntimeError(f"packed layout for {rows}x{cols} is not a permutation of the codes")
    return source
