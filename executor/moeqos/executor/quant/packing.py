"""Bit-packing of int3 and int2 codes: 3 and 2 bits a weight, in memory and on disk.

The grouped formats' codes are uint8 in 0..15 (moeqos.executor.quant.rtn); a b-bit precision uses only
the 2**b codes from `code_offset(b)` (int3: 4..11, int2: 6..9). Packed, a stream of n codes becomes:

- int2: n/4 bytes, code i of a byte in bits 2i..2i+1 (value code - 6);
- int3: a 2-bit plane of the low two bits of (code - 4), packed as int2, followed by a 1-bit plane of
  the high bit, code i of a byte in bit i: n/4 + n/8 bytes.

Planes rather than 3-bit fields so unpacking is byte-wise shifts and masks (no field crosses a byte).
`unpack_nibble_bytes` unpacks straight into two codes a byte (even code in the low nibble), the input of
the int4 kernels' nibble stream (moeqos.executor.quant.layout.nibbles), without a [n] intermediate.
A stream is padded to a multiple of 8 codes with code_offset (unpacking drops the padding).

Shape legend: n codes in the stream.
"""

from __future__ import annotations

import torch
from torch import Tensor

PACKED_BITS = (2, 3)
"""Bit-widths stored bit-packed."""


def code_offset(bits: int) -> int:
    """The smallest code a `bits`-bit format uses (the codes are centred on 8)."""
    return 8 - (1 << (bits - 1))


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """uint8 codes (any shape, n of them) of a `bits`-bit format -> uint8 [n/4 (+ n/8 for int3)], the
    count moeqos.core.precision.packed_code_bytes gives."""
    _check_bits(bits)
    count = codes.numel()
    small = codes.flatten() - code_offset(bits)  # [n] in 0..2**bits-1
    padded = torch.zeros(-(-count // 8) * 8, dtype=torch.uint8, device=codes.device)  # [n8]
    padded[:count] = small
    low = _pack2(padded & 0x03)[: -(-count // 4)]  # [n/4]
    if bits == 2:
        return low.contiguous()
    bit = (padded >> 2).view(-1, 8)  # [n8/8, 8] in 0..1
    high = (bit << torch.arange(8, dtype=torch.uint8, device=codes.device)).sum(1, dtype=torch.uint8)
    return torch.cat([low, high[: -(-count // 8)]])  # [n/4 + n/8]


def unpack_codes(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of `pack_codes`: uint8 [count] codes in the format's range."""
    _check_bits(bits)
    low_bytes = -(-count // 4)
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=packed.device)  # [4]
    codes = ((packed[:low_bytes, None] >> shifts) & 0x03).flatten()[:count]  # [n]
    if bits == 3:
        ones = torch.arange(8, dtype=torch.uint8, device=packed.device)  # [8]
        high = ((packed[low_bytes:, None] >> ones) & 0x01).flatten()[:count]  # [n]
        codes = codes | (high << 2)
    return codes + code_offset(bits)


def unpack_nibble_bytes(packed: Tensor, bits: int, count: int) -> Tensor:
    """The codes of `pack_codes` output two to a byte, code 2j in the low nibble of byte j: uint8
    [count / 2] (count a multiple of 8), the byte stream an int4 kernel's packed tensor is a view of."""
    _check_bits(bits)
    if count % 8:
        raise ValueError(f"nibble bytes need a multiple of 8 codes, got {count}")
    low = _low_pairs(packed[: count // 4])  # [n/2], the low two bits of each code
    if bits == 2:
        return low + 0x66  # code offset 6 in both nibbles; no carry, every nibble stays below 16
    return low | _high_pairs(packed[count // 4 :])  # [n/2]


def _low_pairs(low: Tensor) -> Tensor:
    """uint8 [n/4], four 2-bit values a byte -> uint8 [n/2], two a byte (one per nibble, bits 0-1)."""
    # two output bytes per input byte: values (0, 1) and (2, 3), each pair as first | second << 4
    pairs = torch.stack([(low & 0x03) | ((low & 0x0C) << 2), ((low >> 4) & 0x03) | ((low >> 2) & 0x30)], 1)
    return pairs.flatten()  # [n/2]


def _high_pairs(high: Tensor) -> Tensor:
    """uint8 [n/8], eight high bits a byte -> uint8 [n/2] with nibble value 4 + 4 * bit (the int3 code
    offset and the high bit at once; bits 0-1 stay clear for `_low_pairs`)."""
    h = high.to(torch.int32)  # [n/8]; one int32 holds the four output bytes of one input byte
    spread = (h & 0x3) | ((h & 0xC) << 6) | ((h & 0x30) << 12) | ((h & 0xC0) << 18)  # 2 bits a byte
    placed = ((spread & 0x01010101) << 2) | ((spread & 0x02020202) << 5)  # to bits 2 and 6
    # little-endian (as every platform torch ships for): byte p of the int32 is output byte p
    return (placed + 0x44444444).view(torch.uint8)  # [n/2]


def _pack2(small: Tensor) -> Tensor:
    """uint8 [n4] in 0..3 (n4 a multiple of 4) -> uint8 [n4 / 4], code i of a byte in bits 2i..2i+1."""
    quads = small.view(-1, 4)  # [n4/4, 4]
    return quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)


def _check_bits(bits: int) -> None:
    if bits not in PACKED_BITS:
        raise ValueError(f"bit-packing is for {PACKED_BITS}-bit codes, not {bits}")
