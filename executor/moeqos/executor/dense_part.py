"""A plan's dense part in the executor: the attention projections and the lm head in a plan's precision.

At load, every q/k/v/o projection and the lm head are wrapped in a `DenseSlot` (explicit module swap):
the slot computes with the module a plan switch installed, or with this thread's private one while a
plan is viewed (moeqos.executor.plan_view). A switch re-quantizes only the elements whose precision (or,
grouped, group size) changed, from the checkpoint's own weights (round-to-nearest, the same
`QuantLinear` kernels the experts use), outside the model lock; `install` swaps them in under it.

An element back in the model's dense precision computes with a float `QuantLinear` of the checkpoint
weight (the same F.linear as before), and a tied head with its original module, which *is* the embedding
matrix (no extra bytes). Where bf16 takes oneDNN's prepacked kernel (moeqos.executor.quant.onednn_kernels),
the checkpoint's own bf16 projections are moved into that layout at load, so the dense part computes
with it from the first step; a tied head keeps the plain layout the embedding lookup reads.
Shapes: x [..., in] -> [..., out].
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from moeqos.core.dense import DenseElement, DenseShapes, DenseStatus, DenseTable
from moeqos.core.errors import PlanApplyFailed
from moeqos.core.plan import Plan
from moeqos.core.precision import DEFAULT_GROUP_SIZE, Precision
from moeqos.executor.checkpoint import Checkpoint, CheckpointError
from moeqos.executor.loader import TORCH_DTYPES
from moeqos.executor.quant import gemv_paths
from moeqos.executor.quant.linear import QuantLinear, quantize_linear
from moeqos.executor.quant.onednn_kernels import packed_bf16_fits
from moeqos.executor.quant.rtn import QuantizedWeight
from torch import Tensor, nn


def attention_projections(model: nn.Module, layer: int) -> list[str]:
    """Paths of a decoder layer's attention projections: every `nn.Linear` child of its `self_attn`
    (q/k/v/o in Mixtral, Qwen, OLMoE and Granite; DeepSeek-V3's latent q_a/q_b/kv_a/kv_b/o). Norms
    inside the attention (Qwen3's q_norm, OLMoE's q_norm/k_norm) are not projections and stay as they are."""
    attention = f"model.layers.{layer}.self_attn"
    return [
        f"{attention}.{name}"
        for name, child in model.get_submodule(attention).named_children()
        if isinstance(child, nn.Linear)
    ]


Built = dict[str, nn.Module]
"""Slot name -> the module it should compute with."""


class DenseSlot(nn.Module):
    """One dense matrix whose module plan switches replace and a private view overrides per thread."""

    def __init__(self, name: str, module: nn.Module, bias: Tensor | None, views: threading.local) -> None:
        super().__init__()
        self.name = name
        self.module = module
        self.extra_bias = bias
        """The original's bias, added to a `QuantLinear`'s output (which has none)."""
        self._views = views

    def current(self) -> nn.Module:
        """The module this thread computes with: its private view's, else the installed one."""
        view: Built | None = getattr(self._views, "modules", None)
        return view.get(self.name, self.module) if view else self.module

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in] -> [..., out] with this thread's view of the slot, else the installed module."""
        module = self.current()
        if x.dim() == 2 and type(module) is nn.Linear and module.bias is None:
            # The own decode step's [B, H] activations come here 4 times a layer: the op timed fastest
            # for the shape (moeqos.executor.quant.gemv_paths), past nn.Linear's 4 wrapper aten calls.
            return gemv_paths.matmul(x, module.weight)  # [B, out]
        if x.dim() > 2:
            # Flattened first: matmul does not fold a [B, 1, in] slice (prefill's last position) into
            # one mm when the weight needs no grad, and copies the whole weight into a bmm instead
            # (the head's 57 MB each prefill, 18x the mm's time on the default model).
            return self(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)  # [..., out]
        y = module(x)  # [..., out]
        if self.extra_bias is not None and isinstance(module, QuantLinear):
            y = y + self.extra_bias
        return y


class DensePart:
    """The slots of one loaded model and the precision each element is served in."""

    def __init__(self, model: Any, checkpoint: Checkpoint, device: str, dense: Precision) -> None:
        self.checkpoint, self.device, self.dense = checkpoint, device, dense
        self._views = threading.local()
        self.generation = 0
        """Bumped by every `install` (the only place a slot's module is replaced): a reader that cached
        what the slots compute with (the C decode step's table of addresses) re-reads them."""
        keys = _checkpoint_keys(model, checkpoint)
        self.slots: dict[DenseElement, list[DenseSlot]] = {e: [] for e in DenseElement}
        self.sources: dict[str, str] = {}
        """Slot name -> checkpoint key of its weight."""
        self.shapes_of: dict[str, tuple[int, int]] = {}
        """Slot name -> [out, in] of its weight (the originals are not kept: their bytes go when replaced)."""
        self.tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        self._tied_head: nn.Module | None = model.get_output_embeddings() if self.tied else None
        """A tied head's original module: it holds the embedding matrix, so keeping it costs nothing."""
        for layer in range(len(model.get_submodule("model.layers"))):
            for path in attention_projections(model, layer):
                self._wrap(model, path, model.get_submodule(path), DenseElement.ATTN, keys)
        self._wrap(model, "lm_head", model.get_output_embeddings(), DenseElement.HEAD, keys)
        self.served: dict[DenseElement, tuple[Precision, int]] = {e: (dense, 0) for e in DenseElement}
        """Per element, the precision and group size installed (group size 0 unless grouped)."""
        attention = tuple(shape for path, shape in self.shapes_of.items() if path != "lm_head")
        self._shapes = DenseShapes(attention, self.shapes_of["lm_head"], self.tied)

    def _wrap(
        self, model: nn.Module, path: str, module: Any, element: DenseElement, keys: Mapping[int, str]
    ) -> None:
        slot = DenseSlot(path, self._as_loaded(module, element), getattr(module, "bias", None), self._views)
        owner, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, leaf, slot)
        self.slots[element].append(slot)
        self.sources[path] = keys[id(module.weight)]
        rows, cols = module.weight.shape
        self.shapes_of[path] = (int(rows), int(cols))

    def _as_loaded(self, module: Any, element: DenseElement) -> nn.Module:
        """The module a slot computes with at load: the checkpoint's own, or, for a bias-free bf16
        `nn.Linear` that is not a tied head, a `QuantLinear` of its weight in oneDNN's prepacked layout
        where that kernel serves bf16 (the packed copy replaces the plain one: the same bytes)."""
        weight = getattr(module, "weight", None)
        if (
            type(module) is not nn.Linear
            or module.bias is not None
            or (element == DenseElement.HEAD and self.tied)
            or weight is None
            or weight.dtype != torch.bfloat16
            or not packed_bf16_fits(Precision.BF16, weight.device)
        ):
            return module
        return QuantLinear(QuantizedWeight(Precision.BF16, weight.detach()), weight.device)

    # ----- shapes and bytes ---------------------------------------------------------------------
    def shapes(self) -> DenseShapes:
        """[out, in] of every attention projection and of the head."""
        return self._shapes

    def table(self, group_size: int) -> DenseTable:
        return self.shapes().table(self.dense, group_size)

    def status(self) -> tuple[DenseStatus, ...]:
        """Every element as served: precision and bytes."""
        out = []
        for element, (precision, group) in self.served.items():
            nbytes = self._shapes.element_bytes(element, precision, self.dense, group or DEFAULT_GROUP_SIZE)
            out.append(DenseStatus(element, precision, nbytes))
        return tuple(out)

    # ----- plan switches ------------------------------------------------------------------------
    def wanted(self, plan: Plan) -> dict[DenseElement, tuple[Precision, int]]:
        """Per element, (precision, group size) under `plan` (group size 0 unless grouped; a precision
        naming its group, `int4g32`, has that group whatever the plan's)."""
        named = dict(plan.dense)
        out = {}
        for element in DenseElement:
            precision = named.get(element, self.dense)
            out[element] = (precision, precision.group(plan.group_size) if precision.is_grouped else 0)
        return out

    def changed(self, plan: Plan) -> list[DenseElement]:
        """The elements `plan` wants in another precision (or group size) than the one served."""
        return [e for e, want in self.wanted(plan).items() if self.served[e] != want]

    def build(self, plan: Plan, elements: list[DenseElement]) -> Built:
        """New modules for `elements` as `plan` wants them (nothing installed yet); PlanApplyFailed when
        the checkpoint cannot give a weight."""
        wanted = self.wanted(plan)
        try:
            return {
                slot.name: self._module(slot.name, *wanted[element])
                for element in elements
                for slot in self.slots[element]
            }
        except CheckpointError as exc:
            raise PlanApplyFailed(f"re-quantizing the dense part failed: {exc}") from exc

    def install(self, plan: Plan, built: Built) -> None:
        """Swap `built` in (call under the model lock) and record `plan`'s dense part as served."""
        self.generation += 1
        for element in DenseElement:
            for slot in self.slots[element]:
                if slot.name in built:
                    slot.module = built[slot.name]
        wanted = self.wanted(plan)
        for element in {e for e in DenseElement for s in self.slots[e] if s.name in built}:
            self.served[element] = wanted[element]

    def viewed(self) -> bool:
        """True while this thread computes with a private view (`viewing`)."""
        return getattr(self._views, "modules", None) is not None

    @contextmanager
    def viewing(self, plan: Plan) -> Iterator[None]:
        """Compute this thread's dense matrices as `plan` wants inside the block; others keep theirs."""
        built = self.build(plan, self.changed(plan))
        for slots in self.slots.values():  # the rest as served now: a switch meanwhile changes nothing here
            built.update({slot.name: slot.module for slot in slots if slot.name not in built})
        self._views.modules = built
        try:
            yield
        finally:
            del self._views.modules
            built.clear()

    def _module(self, name: str, precision: Precision, group_size: int) -> nn.Module:
        if precision == self.dense and name == "lm_head" and self._tied_head is not None:
            return self._tied_head  # the embedding matrix itself
        weight = self.checkpoint.read(self.sources[name], self.shapes_of[name])  # [out, in]
        if precision.is_float:
            weight = weight.to(TORCH_DTYPES[precision])
        return quantize_linear(weight, precision, group_size or DEFAULT_GROUP_SIZE, self.device)


def _checkpoint_keys(model: nn.Module, checkpoint: Checkpoint) -> dict[int, str]:
    """id(parameter) -> its checkpoint key (a tied head's weight is found under the embeddings' name)."""
    keys: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in checkpoint.index:
            keys.setdefault(id(param), name)
    return keys
