"""One decode token's routed experts computed together, straight on their kernels.

A decode step calls K experts in each of L layers (60 calls on the default model). Through the module
tree each call costs three `nn.Module` calls, a chunk, the store's plan lookup and a tier check on top of
its two matmuls; `routed_token` runs the K experts of one token as one sequence instead: the K gate-and-up
matmuls (w1 and w3 are one fused [2I, H] weight per expert), one SiLU-and-product over the K rows, the
K down matmuls, one weighted sum. Every matmul is the expert's own kernel on the same [1, ·] rows as the
module path, so the result is bit-identical to mixing `expert(x)` outputs (tests/executor check it).

Why not one stacked kernel per (precision, tier) group (a [E, 2I, H] tensor and one bmm over the routed
experts): measured on the 2-core CPU (bf16, 576x3072, one token, one thread, same run), gathering two
experts' weights and one bmm cost 4.7x two plain matmuls (the gather copies the weights), and torch's
`_grouped_mm` on CPU (a loop over the groups inside) 1.09x; torch has no grouped int8/int4 CPU op. On
CPU the per-call cost is Python, which this removes without moving a byte.

Shape legend: K experts of the token, H hidden size, I intermediate size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from moeqos.executor.quant.expert import QuantExpert
from torch import Tensor


def routed_token(experts: Sequence[QuantExpert], x: Tensor, weights: Tensor) -> Tensor:
    """sum_k weights[0, k] * experts[k](x) for one token x [1, H] -> [1, H] in x's dtype.

    `experts` must all be on x's device, with the same shape; `weights` is [1, K] (any float dtype).
    """
    inter = experts[0].intermediate_size
    h = torch.cat([expert.w13.kernel.matmul(x) for expert in experts])  # [K, 2I]
    if inter * h.element_size() % ROW_ALIGNMENT == 0:  # a fresh [K, I]'s rows are aligned already
        a = F.silu(h[:, :inter]) * h[:, inter:]  # [K, I], row k contiguous
    else:
        a = _aligned_rows(h.shape[0], inter, h)  # [K, I], row k contiguous and 64-byte aligned
        torch.mul(F.silu(h[:, :inter]), h[:, inter:], out=a)
    ys = [expert.w2.kernel.matmul(a[k : k + 1]) for k, expert in enumerate(experts)]  # K x [1, H]
    return mix(ys, weights)


ROW_ALIGNMENT = 64
"""Bytes each row of the fused activations starts on, as a fresh tensor does."""


def _aligned_rows(rows: int, width: int, like: Tensor) -> Tensor:
    """An empty [rows, width] view (`like`'s dtype and device) whose rows start on ROW_ALIGNMENT bytes.

    The module path hands each expert's w2 a fresh tensor; a row of a packed [K, I] tensor starts
    I * itemsize bytes in, and a BLAS kernel peels an unaligned start off and sums in another order
    (one ulp apart on an AMD EPYC for I = 50 in fp32). Only called where I * itemsize is not a multiple
    of ROW_ALIGNMENT (not for the default model's 1536), so the decode path keeps its op count."""
    per_row = ROW_ALIGNMENT // like.element_size()
    padded = -(-width // per_row) * per_row
    return torch.empty(rows, padded, dtype=like.dtype, device=like.device)[:, :width]


def mix(ys: Sequence[Tensor], weights: Tensor) -> Tensor:
    """The token's K expert outputs ys (K x [1, H]) mixed by its routing weights [1, K] -> [1, H].

    One scale and one sum rather than a [1, K] @ [K, H] matmul: a BLAS call may open a thread-parallel
    region, which costs far more than these few elementwise ops, and on a loaded machine waits for every
    thread.
    """
    if weights.dtype != ys[0].dtype:
        weights = weights.to(ys[0].dtype)
    return (torch.cat(list(ys)) * weights.view(-1, 1)).sum(dim=0, keepdim=True)  # [1, H]
