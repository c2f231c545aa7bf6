"""The decode step's layers in C for one stream (moeqos.executor.quant.native.decode), where the native
kernels are built and the layers' weights are in a form they read.

`FastDecoder` hands a one-row bf16 step here. All layers then run in one C call
(`moeqos_decode_layers`): per layer the attention half (norm, q/k/v, rotary, the cache's new column,
attention, o, residual, the second norm, Mixtral's router) and the MoE half (the token's experts, mixed
into the residual). Through the PyTorch step a layer was ~130 aten ops and ~50 µs of Python glue with
the C halves; here Python fills a table of addresses once per step (the slots' current modules, so plan
switches and per-thread views apply as on the PyTorch step) and the experts' tables once per plan.

The C call returns to Python only where it must: a layer whose dense matrices it cannot read runs whole
on the PyTorch step (`DecodeLayer`), and a layer whose routed experts are not all resident device-tier
experts in a readable form (a disk-tier expert, a private plan view, an unreadable precision, a runner
that wraps the store) gets its MoE half here (`moe_step` on the experts' own modules, else the runner's
`run_token`); then the call resumes at the next layer. Route observers hear each layer after the step
(they record; none changes the computation), and `experts_enabled` is honoured per layer.

Arithmetic matches the PyTorch step up to the order of fp32 sums (moeqos_decode.c); greedy output of an
fp32 model never comes here (the step takes bf16 only).

Shape legend: L layers, H hidden, K top-k, d head dim, E experts, W cache columns filled before the step.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from moeqos.core.plan import Plan
from moeqos.executor.dense_part import DensePart
from moeqos.executor.kv_cache import KvCache
from moeqos.executor.quant import native
from moeqos.executor.quant.native import decode
from moeqos.executor.routing import SoftmaxTopK
from moeqos.executor.store import ExpertStore

if TYPE_CHECKING:
    from moeqos.executor.fast_decode import DecodeLayer

DISABLE_ENV = "MOEQOS_NATIVE_STEP"
"""Set to 0 to keep the PyTorch step (the native matmuls still serve it): the A/B of the two steps."""

ExpertTable = tuple["ctypes.Array[ctypes.c_void_p]", "ctypes.Array[ctypes.c_void_p]"]
"""One layer's experts for the C step: addresses of the described w13 and w2 matrices [E] (0: not here)."""


class NativeLayers:
    """The C step over one model's decode layers; `reason` says why it is off (None: on)."""

    def __init__(
        self, layers: list[DecodeLayer], dense: DensePart, heads: int, kv_heads: int, head_dim: int
    ) -> None:
        self.layers: list[Any] = list(layers)
        """The decode layers (typed loosely: their modules' attributes are read as the model defines them)."""
        self._dense = dense
        self._slots = [
            tuple(getattr(layer.attention, name) for name in _PROJECTIONS) for layer in self.layers
        ]
        """Per layer its q, k, v and o `DenseSlot`s (read once: a module attribute costs a lookup each time)."""
        self._blocks = [layer.moe for layer in self.layers]
        self._dense_generation: int | None = None
        """The dense part's `generation` the table's q/k/v/o addresses are for (None: stale)."""
        self._cache_buffers: int | None = None
        """The `KvCache.buffers` the table's cache addresses are for (None: stale)."""
        self.reason = _unsupported(layers)
        self.shape = decode.Shape()
        self._table = (decode.Layer * len(layers))()
        """The per-layer addresses handed to C; norms and routers set here, the rest every step."""
        self._experts_of_plan: tuple[ExpertStore | None, Plan | None] = (None, None)
        """The store and serving plan the table's w13/w2 point at ((None, None): at no experts)."""
        self._experts: list[ExpertTable] = []
        """Those per-layer expert tables (kept alive here: the table holds their addresses)."""
        self.steps = 0
        """Decode steps run here (whether a given step ran in C: moeqos.executor.step_profile)."""
        self.clock: ctypes.Array[ctypes.c_double] | None = None
        """When set (`timed`), C adds the seconds of its attention halves and MoE halves here."""
        if self.reason is not None:
            return
        first = self.layers[0]
        router = first.moe.router
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
        for entry, layer in zip(self._table, self.layers, strict=True):
            entry.input_norm = layer.input_norm.norm.weight.data_ptr()
            entry.post_norm = layer.post_norm.norm.weight.data_ptr()
            entry.router = layer.moe.router.weight.data_ptr()

    def takes(self, x: torch.Tensor) -> bool:
        """True if the C step runs this step's activations x [B, H]: one bf16 row on the CPU."""
        return (
            self.reason is None and x.shape[0] == 1 and x.dtype == torch.bfloat16 and x.device.type == "cpu"
        )

    def __call__(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KvCache, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x [1, H] (updated in place and returned) through every layer; cos, sin [1, 1, d]; mask
        [1, 1, 1, W + 1] bool or None. The cache has room for column W (the caller advances W)."""
        count, k = len(self.layers), self.shape.top_k
        x = x.contiguous()
        normed = torch.empty(count, x.shape[1], dtype=x.dtype)  # [L, H]
        ids = torch.empty(count, k, dtype=torch.int64)  # [L, K]
        weights = torch.empty(count, k)  # [L, K] fp32
        columns = None if mask is None else mask.reshape(-1).contiguous()  # [W + 1] bool
        stop = (ctypes.c_int64 * 2)()
        self.steps += 1
        self._fill(cache)
        on_pytorch: set[int] = set()
        first = 0
        while first < count:
            decode.decode_layers(
                self.shape, self._table, first, x, normed, ids, weights, cos, sin, cache.width, columns, stop,
                self.clock,
            )  # fmt: skip
            index, experts_only = stop[0], stop[1]
            if index == count:
                break
            if experts_only:
                self._experts_of(
                    index, x, normed[index : index + 1], ids[index : index + 1], weights[index : index + 1]
                )
            else:
                x.copy_(self.layers[index](x, cos, sin, cache, mask))  # [1, H], the PyTorch step's layer
                on_pytorch.add(index)
            first = index + 1
        for index, block in enumerate(self._blocks):
            observer = block.observer
            if observer is not None and index not in on_pytorch:  # a PyTorch layer's block told it already
                observer(index, normed[index : index + 1], ids[index : index + 1])
        return x

    @contextmanager
    def timed(self) -> Iterator[ctypes.Array[ctypes.c_double]]:
        """Inside the block the C step clocks itself: [seconds of attention halves, of MoE halves], summed
        over the steps (for moeqos.executor.step_profile, whose profiler cannot see into a C call)."""
        self.clock = (ctypes.c_double * 2)()
        try:
            yield self.clock
        finally:
            self.clock = None

    def _fill(self, cache: KvCache) -> None:
        """Point the table at this step's weights (as this thread's plan has them) and cache. The dense
        addresses are re-read when the dense part changed (or a private view is active), the expert ones
        when the experts' tables did, the cache's when its buffers were replaced or the dense ones were
        re-read (a layer whose cache C cannot read goes whole to the PyTorch step: no q); `experts_on`
        every step. (Re-reading the cache every step took ~0.15 ms of a ~10 ms step.)"""
        viewed = self._dense.viewed()
        dense_read = viewed or self._dense_generation != self._dense.generation
        if dense_read:
            for entry, slots in zip(self._table, self._slots, strict=True):
                entry.q, entry.k, entry.v, entry.o = _described_projections(slots) or (None, None, None, None)
            self._dense_generation = None if viewed else self._dense.generation
        self._point_experts()
        if dense_read or self._cache_buffers != cache.buffers:
            for entry, keys, values in zip(self._table, cache.keys, cache.values, strict=True):
                if not _cache_ok(keys, values):  # [1, h, C, d] each: the whole layer on the PyTorch step
                    entry.q, self._dense_generation = None, None
                    continue
                entry.keys, entry.values = keys.data_ptr(), values.data_ptr()
                entry.head_stride = keys.stride(1)
            self._cache_buffers = cache.buffers
        for entry, block in zip(self._table, self._blocks, strict=True):
            entry.experts_on = block.experts_enabled

    def _point_experts(self) -> None:
        """Point the table at each layer's described device-tier experts of the store's serving plan,
        rebuilt when the plan object changes; at none (every layer's experts handed back) where they are
        not the serving plan's: a runner that wraps the store, a private view on this thread."""
        store = self._blocks[0].runner
        serving = isinstance(store, ExpertStore) and not store.viewed() and store.plan is not None
        if not serving or any(block.runner is not store for block in self._blocks):
            store = None
        plan = None if store is None else store.plan
        if self._experts_of_plan[0] is store and self._experts_of_plan[1] is plan:
            return
        self._experts = (
            [] if store is None else [self._layer_experts(store, i) for i in range(len(self.layers))]
        )
        for index, entry in enumerate(self._table):
            entry.w13 = ctypes.addressof(self._experts[index][0]) if self._experts else None
            entry.w2 = ctypes.addressof(self._experts[index][1]) if self._experts else None
        self._experts_of_plan = (store, plan)

    def _layer_experts(self, store: ExpertStore, layer: int) -> ExpertTable:
        pairs = []
        for expert in range(self.shape.experts):
            modules = store.device_experts(layer, [expert])
            pairs.append(None if modules is None else _described_pair(modules[0]))
        w13 = [None if pair is None else pair[0] for pair in pairs]
        w2 = [None if pair is None else pair[1] for pair in pairs]
        return (ctypes.c_void_p * len(w13))(*w13), (ctypes.c_void_p * len(w2))(*w2)

    def _experts_of(
        self, index: int, x: torch.Tensor, normed: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor
    ) -> None:
        """x += the MoE block's output for the routed `ids` [1, K] with `weights` [1, K] of its input
        `normed` [1, H]: in C when the experts' own modules are readable, else the runner's."""
        block = self._blocks[index]
        chosen = ids[0].tolist()
        experts = _described_experts(block.runner, index, chosen)
        if experts is None:
            x.add_(block.runner.run_token(index, chosen, normed, weights))  # [1, H]
        else:
            decode.moe_step(x, normed, experts, weights)


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


_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _described_projections(slots: tuple[Any, ...]) -> tuple[int, int, int, int] | None:
    """The described q, k, v and o matrices of a layer's slots as the plan (or this thread's view) has
    them; None unless the C step reads all four."""
    found: list[int] = []
    for slot in slots:
        address = None if slot.extra_bias is not None else decode.describe(slot.current())
        if address is None:
            return None
        found.append(address)
    return found[0], found[1], found[2], found[3]


def _described_experts(runner: Any, layer: int, chosen: list[int]) -> list[tuple[int, int]] | None:
    """The described (gate-and-up, down) matrices of the routed experts, or None unless every one is a
    resident device-tier expert the C step reads."""
    modules = runner.device_experts(layer, chosen)
    if modules is None:
        return None
    pairs = [_described_pair(module) for module in modules]
    return None if None in pairs else pairs  # type: ignore[return-value]  # no None, checked


def _described_pair(expert: Any) -> tuple[int, int] | None:
    """The described (gate-and-up, down) matrices of one expert module, or None unless C reads both."""
    w13, w2 = decode.describe(expert.w13.kernel), decode.describe(expert.w2.kernel)
    return None if w13 is None or w2 is None else (w13, w2)


def _cache_ok(keys: torch.Tensor, values: torch.Tensor) -> bool:
    """True if a layer's cache [1, h, C, d] is bf16 with contiguous columns and one head stride."""
    return all(
        t.dtype == torch.bfloat16
        and t.stride(3) == 1
        and t.stride(2) == t.shape[3]
        and t.stride(1) == keys.stride(1)
        for t in (keys, values)
    )
