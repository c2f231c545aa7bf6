"""The decode step's layers in C for one stream (moeqos.executor.quant.native.decode), where the native
kernels are built and the layer's weights are in a form they read.

`FastDecoder` hands a one-row bf16 step here; each layer is then two C calls instead of ~130 aten ops:
the attention half (norm, q/k/v, rotary, the cache's new column, attention, o, residual, the second norm
and Mixtral's router) and the MoE half (the token's experts, mixed into the residual). What stays in
Python per layer is reading the plan: the slots' current modules (plan switches and per-thread views
apply as on the PyTorch step), the routed experts' modules from the store, their cached descriptions.

A layer whose dense matrices the C step cannot read runs on the PyTorch step (`DecodeLayer`); a MoE half
whose experts are not all resident device-tier experts in a readable form (a disk-tier expert, a private
plan view, an unreadable precision) runs on the runner's `run_token`; both on the same tensors and cache,
so one step mixes the two freely. The route observer (profiling) and `experts_enabled` are honoured.

Arithmetic matches the PyTorch step up to the order of fp32 sums (moeqos_decode.c); greedy output of an
fp32 model never comes here (the step takes bf16 only).

Shape legend: H hidden, K top-k, d head dim, W cache columns filled before the step.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from moeqos.executor.kv_cache import KvCache
from moeqos.executor.quant import native
from moeqos.executor.quant.native import decode
from moeqos.executor.routing import SoftmaxTopK

if TYPE_CHECKING:
    from moeqos.executor.fast_decode import DecodeLayer


class NativeLayers:
    """The C step over one model's decode layers; `reason` says why it is off (None: on)."""

    def __init__(self, layers: list[DecodeLayer], heads: int, kv_heads: int, head_dim: int) -> None:
        self.layers = layers
        self.reason = _unsupported(layers)
        self.shape = decode.Shape()
        self._norms: list[tuple[int, int]] = []
        self._routers: list[int] = []
        if self.reason is not None:
            return
        first = layers[0]
        router: SoftmaxTopK = first.moe.router
        self.shape = decode.Shape(
            hidden=first.input_norm.norm.weight.shape[0],
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            experts=router.weight.shape[0],
            top_k=router.width,
            norm_eps=first.input_norm.eps,
            scale=first.attention.scale,
        )
        self._norms = [
            (layer.input_norm.norm.weight.data_ptr(), layer.post_norm.norm.weight.data_ptr()) for layer in layers
        ]
        self._routers = [layer.moe.router.weight.data_ptr() for layer in layers]

    def takes(self, x: torch.Tensor) -> bool:
        """True if the C step runs this step's activations x [B, H]: one bf16 row on the CPU."""
        return self.reason is None and x.shape[0] == 1 and x.dtype == torch.bfloat16 and x.device.type == "cpu"

    def __call__(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KvCache, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x [1, H] (updated in place and returned) through every layer; cos, sin [1, 1, d]; mask
        [1, 1, 1, W + 1] bool or None. The cache has room for column W (the caller advances W)."""
        k = self.shape.top_k
        x = x.contiguous()
        normed = torch.empty_like(x)  # [1, H]
        ids = torch.empty(1, k, dtype=torch.int64)  # [1, K]
        weights = torch.empty(1, k)  # [1, K] fp32
        columns = None if mask is None else mask.reshape(-1).contiguous()  # [W + 1] bool
        for index, layer in enumerate(self.layers):
            keys, values = cache.keys[index], cache.values[index]  # [1, h, C, d]
            projections = _projections(layer)
            if projections is None or not (_cache_ok(keys) and _cache_ok(values)):
                x = layer(x, cos, sin, cache, mask).contiguous()  # the PyTorch step for this layer
                continue
            decode.attention_step(
                self.shape, x, normed, self._norms[index], projections, cos, sin, keys, values,
                cache.width, columns, self._routers[index], ids, weights,
            )  # fmt: skip
            self._experts(index, layer.moe, x, normed, ids, weights)
        return x

    def _experts(
        self, index: int, block: Any, x: torch.Tensor, normed: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor
    ) -> None:
        """x += the MoE block's output for the routed `ids` [1, K] with `weights` [1, K]."""
        if block.observer is not None:
            block.observer(index, normed.clone(), ids.clone())
        if not block.experts_enabled:
            return
        chosen = ids[0].tolist()
        experts = _experts(block.runner, index, chosen)
        if experts is None:
            x.add_(block.runner.run_token(index, chosen, normed, weights))  # [1, H]
        else:
            decode.moe_step(x, normed, experts, weights)


DISABLE_ENV = "MOEQOS_NATIVE_STEP"
"""Set to 0 to keep the PyTorch step (the native matmuls still serve it): the A/B of the two steps."""


def _unsupported(layers: list[DecodeLayer]) -> str | None:
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return f"{DISABLE_ENV}=0"
    if native.library() is None:
        return "the native kernels are not built"
    for layer in layers:
        router = layer.moe.router
        if type(router) is not SoftmaxTopK or not router.renormalise:
            return f"router {type(router).__name__} is not Mixtral's"
        for norm in (layer.input_norm, layer.post_norm):
            weight = norm.norm.weight
            if weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or not weight.is_contiguous():
                return "the norms are not bf16 on the CPU"
        if not router.weight.is_contiguous() or router.weight.device.type != "cpu":
            return "the router is not on the CPU"
    return None


def _projections(layer: DecodeLayer) -> tuple[int, int, int, int] | None:
    """The described q, k, v and o matrices of the layer as the plan (or this thread's view) has them."""
    attention = layer.attention
    found = []
    for slot in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
        address = None if slot.extra_bias is not None else decode.describe(slot.current())
        if address is None:
            return None
        found.append(address)
    return found[0], found[1], found[2], found[3]


def _experts(runner: Any, layer: int, chosen: list[int]) -> list[tuple[int, int]] | None:
    """The described (gate-and-up, down) matrices of the routed experts, or None unless every one is a
    resident device-tier expert the C step reads."""
    modules = runner.device_experts(layer, chosen)
    if modules is None:
        return None
    found = []
    for module in modules:
        w13, w2 = decode.describe(module.w13.kernel), decode.describe(module.w2.kernel)
        if w13 is None or w2 is None:
            return None
        found.append((w13, w2))
    return found


def _cache_ok(buffer: torch.Tensor) -> bool:
    """True if a layer's cache [1, h, C, d] is bf16 with contiguous columns (any head stride)."""
    return buffer.dtype == torch.bfloat16 and buffer.stride(3) == 1 and buffer.stride(2) == buffer.shape[3]
