"""An own decode step for Mixtral-style models: [B, 1] tokens on a `KvCache`, past transformers' module
tree.

Legend for shape comments: B rows (streams), H hidden, n query heads, h KV heads, d head dim, W cache
width before the step, V vocabulary.

Activations stay [B, H] between the embedding and the head (no sequence axis): on a 2-D input a
projection is one `mm`, where [B, 1, H] takes matmul's fold-and-unfold path, ~5 more aten ops each. The
step is counted in aten ops, since at one token most of them cost dispatch, not arithmetic (the
README's "Where a decode step goes").

transformers' forward costs a decode token far more than its matmuls on a CPU: per step it builds a
causal mask, computes the rotary table for the positions, and per layer runs ~8 modules, rotates q and
k separately, concatenates the whole KV cache (`DynamicCache`, O(W) copying per layer) and reshapes
through its attention interface. This step does per layer: RMS norm, the q, k and v
projections, one rotation of q and k together with cos/sin read from a table by position, one column
written into the preallocated cache, attention over the filled columns (a view; SDPA, in fp32 for
bf16 on the CPU, see `decode_attention`), the o projection, RMS norm and the MoE block, which is the
runtime's own (`moeqos.executor.moe.MoeBlock`, unchanged).

The projections and the head are the model's own `DenseSlot`s (moeqos.executor.dense_part), so plan
switches and per-thread plan views apply here exactly as on transformers' path; the norms, embedding,
rotary module and MoE blocks are the model's own too, read at every step (nothing is copied, so there
is nothing to rebuild when a plan changes).

Served only for families whose attention is Llama's (Mixtral: `supports`). Qwen2-MoE (qkv bias),
Qwen3-MoE and OLMoE (q/k norms), Granite-MoE (multipliers), DeepSeek-V3 (latent attention) and models
with a sliding window or a rotary scaling that depends on the length decode on transformers' path.
Prefill (more than one token per row) always runs there: the runtime hands it the cache as a
DynamicCache of views (moeqos.executor.kv_cache).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from moeqos.executor.dense_part import DensePart
from moeqos.executor.kv_cache import KvCache
from moeqos.executor.native_decode import NativeLayers
from torch import nn

__all__ = ["FastDecoder", "unsupported_reason"]

_STATIC_ROPE = ("default", "linear", "llama3", "yarn")
"""Rotary types whose frequencies do not depend on the sequence length (a table by position is exact)."""


def unsupported_reason(model_type: str, hf_config: Any) -> str | None:
    """Why the fast decode step cannot serve this model (None: it can)."""
    if model_type != "mixtral":
        return f"{model_type}'s attention differs from Llama's"
    window = getattr(hf_config, "sliding_window", None)
    if window is not None and bool(getattr(hf_config, "use_sliding_window", True)):
        return "attention has a sliding window"
    rope = (getattr(hf_config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in _STATIC_ROPE:
        return f"rotary type {rope} depends on the sequence length"
    return None


class DecodeRmsNorm(nn.Module):
    """An RMS norm (the model's weight and epsilon), x [..., H] -> [..., H], written out as transformers'
    `MixtralRMSNorm` computes it (fp32 mean of squares, rsqrt, back to x's dtype, times the weight).

    Not `F.rms_norm`: on a bf16 CPU tensor its composite runs ~34 aten ops (casts of every operand to
    fp32 and back); this is 16 (pow, mean and the epsilon's add written as the multiply, sum, divide
    and add they run, with 0-dim tensors for the constants, which a Python number would be cast into on
    every call), with the same result as transformers' module, bit for bit.
    """

    norm: nn.Module

    def __init__(self, norm: Any) -> None:
        super().__init__()
        self.norm = norm
        self.eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        # 0-dim fp32 CPU tensors, scalars to ops on any device (a Python number is cast on every call)
        self._eps = torch.tensor(self.eps)
        self._width = torch.tensor(float(norm.weight.shape[-1]))  # H

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight: torch.Tensor = self.norm.weight  # type: ignore[assignment]  # [H], a Parameter
        wide = x.float()  # [..., H] fp32 (x itself when already fp32)
        variance = (wide * wide).sum(-1, keepdim=True).div_(self._width)  # [..., 1]: the mean
        return weight * (wide * variance.add_(self._eps).rsqrt_()).to(x.dtype)  # [..., H]


class DecodeAttention(nn.Module):
    """One layer's attention for one new token per row, on the layer's slots of a `KvCache`."""

    q_proj: nn.Module
    k_proj: nn.Module
    v_proj: nn.Module
    o_proj: nn.Module

    def __init__(self, attention: Any, layer: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj = attention.q_proj, attention.k_proj
        self.v_proj, self.o_proj = attention.v_proj, attention.o_proj
        self.layer, self.heads, self.kv_heads, self.head_dim = layer, heads, kv_heads, head_dim
        self.scale = float(getattr(attention, "scaling", head_dim**-0.5))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KvCache, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x [B, H], cos/sin [B, 1, d], mask [B, 1, 1, W + 1] (True: attend) or None -> [B, H].
        Writes the token's key and value into column W of the cache (the caller advances W).
        `sin` carries rotate_half's sign (see `_rotated`)."""
        rows, n, h, d = x.shape[0], self.heads, self.kv_heads, self.head_dim
        q = self.q_proj(x).view(rows, n, d)  # [B, n, d]
        k = self.k_proj(x).view(rows, h, d)  # [B, h, d]
        v = self.v_proj(x).view(rows, h, 1, d)  # [B, h, 1, d]
        qk = _rotated(torch.cat([q, k], dim=1), cos, sin)  # [B, n + h, d]
        width = cache.width
        keys, values = cache.keys[self.layer], cache.values[self.layer]  # [B, h, C, d]
        keys[:, :, width] = qk[:, n:]
        values[:, :, width : width + 1] = v
        keys, values = keys[:, :, : width + 1], values[:, :, : width + 1]  # [B, h, W + 1, d]
        out = decode_attention(qk[:, :n], keys, values, mask, self.scale)  # [B, n * d]
        return self.o_proj(out)  # [B, H]


def decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Attention of one query token per row: q [B, n, d], keys and values [B, h, W, d] (query heads
    grouped by their KV head as transformers' repeat_kv orders them), mask [B, 1, 1, W] (True: attend)
    or None -> [B, n * d] in q's dtype. SDPA, in fp32 for bf16 operands on the CPU.

    Why fp32 there: torch's bf16 SDPA on the CPU costs a one-token query ~1 us per cached column per
    layer (1 thread, AMD EPYC: 59 / 243 / 493 / 1,763 us at W = 64 / 256 / 512 / 2,048), and bf16
    `matmul`s around an fp32 softmax go to oneDNN, whose per-call cost is most of a small product
    (2 threads: 77 / 128 / 301 us at W = 64 / 512 / 2,048). Upcast copies of q, k and v and the fp32
    kernel take 17 / 47 / 160 us, the copies included, and every product and the softmax then run in
    fp32: closer to exact than either bf16 route. fp32 and the other devices run SDPA as it is
    (transformers' own arithmetic, so fp32 greedy output stays identical to transformers').
    """
    rows, n, d = q.shape
    work = torch.float32 if q.dtype == torch.bfloat16 and q.device.type == "cpu" else q.dtype
    out = F.scaled_dot_product_attention(
        q[:, :, None].to(work),  # [B, n, 1, d]
        keys.to(work),
        values.to(work),
        attn_mask=mask,
        scale=scale,
        enable_gqa=n != keys.shape[1],
    )  # [B, n, 1, d]
    return out.reshape(rows, n * d).to(q.dtype)


def _rotated(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, m, d] with cos and signed sin [B, 1, d] (`signed_sin`: the first half
    of sin negated), equal bit for bit to transformers' `apply_rotary_pos_emb`: x * cos +
    rotate_half(x) * sin, where rotate_half(x) = cat(-x2, x1), and (-a) * s == a * (-s) exactly, so
    the sign sits in the table instead of a `neg` per step (a `cat` of the two halves is 8 aten ops,
    `roll` 11, a flip of the [2, d/2] view 8)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([x[..., half:], x[..., :half]], dim=-1) * signed_sin  # [B, m, d]


class DecodeLayer(nn.Module):
    """norm -> attention -> residual -> norm -> MoE block -> residual, for [B, 1, H]."""

    attention: DecodeAttention
    moe: nn.Module

    def __init__(self, decoder: Any, attention: DecodeAttention, moe: nn.Module) -> None:
        super().__init__()
        self.input_norm = DecodeRmsNorm(decoder.input_layernorm)
        self.attention = attention
        self.post_norm = DecodeRmsNorm(decoder.post_attention_layernorm)
        self.moe = moe

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KvCache, mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.attention(self.input_norm(x), cos, sin, cache, mask)  # [B, H]
        return x + self.moe(self.post_norm(x))  # [B, H]


class FastDecoder(nn.Module):
    """The decode step of one loaded Mixtral-style model (see the module docstring)."""

    layers: nn.ModuleList

    def __init__(self, lm: Any, hf_config: Any, moe_module: str, dense: DensePart) -> None:
        super().__init__()
        base: Any = lm.get_submodule("model")
        heads, kv_heads = int(hf_config.num_attention_heads), int(hf_config.num_key_value_heads)
        head_dim = int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads)
        self.layers = nn.ModuleList(
            DecodeLayer(
                decoder,
                DecodeAttention(decoder.self_attn, i, heads, kv_heads, head_dim),
                decoder.get_submodule(moe_module),
            )
            for i, decoder in enumerate(base.layers)
        )
        self.norm = DecodeRmsNorm(base.norm)
        self.native = NativeLayers(list(self.layers), dense, heads, kv_heads, head_dim)  # type: ignore[arg-type]
        """The layers in C for one bf16 row where the native kernels are built (its `reason` when not)."""
        self._lm: list[Any] = [lm]
        """The model (in a list: not a submodule, so this module's tree holds only the decode path)."""
        self._rotary = base.rotary_emb
        self._cos = self._sin = torch.empty(0)
        """Rotary tables [P, d] for positions 0..P-1 in the activations' dtype (grown on demand); the
        sin table's first half negated (see `_rotated`)."""

    def forward(
        self,
        token_ids: torch.Tensor,
        cache: KvCache,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, 1, V] of token ids [B, 1] on `cache` (filled, W columns), which grows by one column.
        A left-padded batch passes its attention mask [B, W + 1] (0 on padding) and positions [B, 1]."""
        lm = self._lm[0]
        x = lm.get_input_embeddings()(token_ids[:, 0])  # [B, H]
        if position_ids is None:
            position_ids = torch.full_like(token_ids, cache.width)  # [B, 1]
        cos, sin = self._table(position_ids, cache.width + 1, x)  # [B, 1, d] each, sin signed
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # [B, 1, 1, W + 1]
        cache.reserve(1)
        if self.native.takes(x):
            x = self.native(x, cos, sin, cache, mask)  # [1, H]
        else:
            for layer in self.layers:
                x = layer(x, cos, sin, cache, mask)  # [B, H]
        cache.width += 1
        return lm.get_output_embeddings()(self.norm(x))[:, None]  # [B, 1, V]

    def _table(
        self, position_ids: torch.Tensor, top: int, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed sin [B, 1, d] of positions [B, 1] (see `_rotated`), all below `top` (a row's
        position is its length, at most the cache's width: no read of the ids), from the tables,
        extended by doubling when short."""
        if top > self._cos.shape[0] or self._cos.dtype != x.dtype or self._cos.device != x.device:
            size = max(256, 2 * top)
            positions = torch.arange(size, device=x.device)[None]  # [1, P]
            cos, sin = self._rotary(x, positions)  # [1, P, d] each, in x's dtype
            half = sin.shape[-1] // 2
            self._cos, self._sin = cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)  # [P, d]
        return self._cos[position_ids], self._sin[position_ids]  # [B, 1, d]
