"""The operands of the C decode step (moeqos_decode.c): weight matrices described once per loaded kernel,
the model's layer shape and the per-layer table, and the two calls (all layers; one layer's experts).

A described matrix is a ctypes `Matrix` holding the addresses of a kernel's tensors; it is cached per
kernel object (a kernel never changes its tensors, and a plan switch installs new kernels), so a decode
step looks descriptions up instead of building them. A kernel the C step cannot read (fp32, a torch int4
layout, int8 where torch's op was measured faster, int3/int2, another device) has no description, and
the caller runs that layer (or that layer's experts) on the PyTorch step.

Shape legend: H hidden, K top-k, W cache columns filled, d head dim.
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass

import torch
from moeqos.executor.quant import native
from torch import Tensor, nn

BF16, INT8, INT4 = 1, 2, 3
"""`Matrix.kind` values, moeqos_decode.c's MQ_BF16, MQ_INT8, MQ_INT4."""


class Matrix(ctypes.Structure):
    """moeqos_decode.c's MqMatrix: one [N, K] weight as a native kernel reads it."""

    _fields_ = [
        ("kind", ctypes.c_int64),
        ("n", ctypes.c_int64),
        ("k", ctypes.c_int64),
        ("group", ctypes.c_int64),
        ("w", ctypes.c_void_p),
        ("scales", ctypes.c_void_p),
        ("zeros", ctypes.c_void_p),
    ]


class Shape(ctypes.Structure):
    """moeqos_decode.c's MqShape: a model's layer sizes and constants."""

    _fields_ = [
        ("hidden", ctypes.c_int64),
        ("heads", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("experts", ctypes.c_int64),
        ("top_k", ctypes.c_int64),
        ("norm_eps", ctypes.c_float),
        ("scale", ctypes.c_float),
    ]


@dataclass(frozen=True)
class Described:
    """A `Matrix` and its address (what the C calls take), with the tensors it points into kept alive."""

    matrix: Matrix
    address: int
    tensors: tuple[Tensor, ...]


_described: weakref.WeakKeyDictionary[object, Described | None] = weakref.WeakKeyDictionary()


def describe(owner: object) -> int | None:
    """The address of a `Matrix` for a dense module (`nn.Linear` without bias, `QuantLinear`) or a kernel
    (`FloatKernel`, `Int8CpuKernel`, `Int4CpuKernel`), or None where the C step cannot read it."""
    try:
        found = _described[owner]
    except KeyError:
        found = _described[owner] = _describe(owner)
    return None if found is None else found.address


def _describe(owner: object) -> Described | None:
    from moeqos.executor.quant.cpu_kernels import Int4CpuKernel, Int8CpuKernel
    from moeqos.executor.quant.kernel import FloatKernel
    from moeqos.executor.quant.linear import QuantLinear

    if type(owner) is nn.Linear:
        return _bf16(owner.weight.detach()) if owner.bias is None else None
    kernel = owner.kernel if isinstance(owner, QuantLinear) else owner
    if isinstance(kernel, FloatKernel):
        return _bf16(kernel.q.values)
    if isinstance(kernel, Int8CpuKernel) and kernel.native:
        codes, scales = kernel.q.values, kernel.q.scales
        assert scales is not None
        if not _plain(codes, scales):
            return None
        return _made(INT8, codes.shape[0], codes.shape[1], 0, codes, scales, None)
    if isinstance(kernel, Int4CpuKernel) and kernel.native:
        packed, halves = kernel.packed, kernel.scales_zeros  # [N, K/2], [2, N, G]
        if not _plain(packed, halves):
            return None
        rows, cols = kernel.shape
        scales, zeros = halves[0], halves[1]  # views: the addresses of the two [N, G] halves
        return _made(INT4, rows, cols, kernel.group_size, packed, scales, zeros)
    return None


def _bf16(weight: Tensor) -> Described | None:
    if weight.dtype != torch.bfloat16 or weight.dim() != 2 or weight.shape[1] % 8 or not _plain(weight):
        return None
    return _made(BF16, weight.shape[0], weight.shape[1], 0, weight, None, None)


def _plain(*tensors: Tensor) -> bool:
    return all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)


def _made(
    kind: int,
    rows: int,
    cols: int,
    group: int,
    w: Tensor,
    scales: Tensor | None,
    zeros: Tensor | None,
) -> Described:
    matrix = Matrix(
        kind, rows, cols, group, w.data_ptr(),
        0 if scales is None else scales.data_ptr(), 0 if zeros is None else zeros.data_ptr(),
    )  # fmt: skip
    kept = tuple(t for t in (w, scales, zeros) if t is not None)  # views keep their bases alive
    return Described(matrix, ctypes.addressof(matrix), kept)


class Layer(ctypes.Structure):
    """moeqos_decode.c's MqLayer: one layer's weights and cache as the C step reads them (addresses; 0 for
    `q` hands the whole layer to the caller, 0 for `w13`/`w2` or an entry of them hands it its experts)."""

    _fields_ = [
        ("input_norm", ctypes.c_void_p),
        ("post_norm", ctypes.c_void_p),
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("o", ctypes.c_void_p),
        ("router", ctypes.c_void_p),
        ("keys", ctypes.c_void_p),
        ("values", ctypes.c_void_p),
        ("head_stride", ctypes.c_int64),
        ("experts_on", ctypes.c_int64),
        ("w13", ctypes.c_void_p),
        ("w2", ctypes.c_void_p),
    ]


def decode_layers(
    shape: Shape,
    layers: ctypes.Array[Layer],
    first: int,
    x: Tensor,
    normed: Tensor,
    ids: Tensor,
    weights: Tensor,
    cos: Tensor,
    sin: Tensor,
    width: int,
    mask: Tensor | None,
    stop: ctypes.Array[ctypes.c_int64],
    seconds: ctypes.Array[ctypes.c_double] | None = None,
) -> None:
    """Layers `first`.. of one token's decode step in C (moeqos_decode_layers): x [1, H] updated in place,
    each layer's MoE input, routed ids and weights into rows of `normed` [L, H], `ids` int64 [L, K] and
    `weights` fp32 [L, K], the token's key and value into column `width` of each layer's cache; cos, sin
    [1, 1, d]; mask bool [W + 1] or None. `stop` gets (layer, 1) where that layer's experts are the
    caller's, (layer, 0) where the whole layer is, (L, 0) when done. `seconds` (two doubles), when given,
    accumulates the wall time of the attention halves and of the MoE halves."""
    native.call(
        "moeqos_decode_layers", ctypes.addressof(shape), ctypes.addressof(layers), len(layers), first,
        x.data_ptr(), normed.data_ptr(), ids.data_ptr(), weights.data_ptr(), cos.data_ptr(), sin.data_ptr(),
        width, 0 if mask is None else mask.data_ptr(), ctypes.addressof(stop),
        0 if seconds is None else ctypes.addressof(seconds), torch.get_num_threads(),
    )  # fmt: skip


def moe_step(x: Tensor, normed: Tensor, experts: list[tuple[int, int]], weights: Tensor) -> None:
    """x [1, H] += sum_j weights[0, j] * expert_j(normed [1, H]) (moeqos_moe_step), each expert given as
    the `describe`d addresses of its fused gate-and-up and its down matrix."""
    count = len(experts)
    w13 = (ctypes.c_void_p * count)(*(pair[0] for pair in experts))
    w2 = (ctypes.c_void_p * count)(*(pair[1] for pair in experts))
    native.call(
        "moeqos_moe_step", x.shape[1], x.data_ptr(), normed.data_ptr(), count, ctypes.addressof(w13),
        ctypes.addressof(w2), weights.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
