"""The own decode step's per-token pieces (moeqos.executor.fast_decode) against transformers' own,
bit for bit, and the step's aten op count (load-independent, so a regression in per-op overhead shows
on any machine)."""

from __future__ import annotations

import pytest
import torch
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor.fast_decode import DecodeRmsNorm, _rotated
from moeqos.executor.quant import gemv_paths
from moeqos.executor.quant.onednn_kernels import packed_bf16_fits
from moeqos.executor.runtime import ExecutorRuntime
from torch.profiler import profile
from transformers.models.mixtral.modeling_mixtral import MixtralRMSNorm, apply_rotary_pos_emb

from tests.executor.tiny import EXPERTS, LAYERS, prompt_ids

STEP_OPS = 410
"""Ceiling on aten ops in one bf16 decode step of the 2-layer tiny model (measured 2026-12-02: 388;
before the op trimming of that day, 578): the trimmed casts, reshapes and scalar wraps must not return."""
STEP_OPS_UNPACKED = 430
"""The same where oneDNN has no native bf16 (moeqos.executor.quant.onednn_kernels): the dense
projections and the head then go through the few-row table too, not the prepacked kernel (measured
2026-12-04 on an AMD EPYC without AVX512-BF16: 420 with `mm` chosen, at most 410 with the others)."""


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3])
def test_rms_norm_is_transformers_bit_for_bit(dtype: torch.dtype, rows: int) -> None:
    theirs = MixtralRMSNorm(96, eps=1e-5).to(dtype)
    torch.nn.init.normal_(theirs.weight, generator=torch.Generator().manual_seed(rows))
    x = torch.randn(rows, 96, generator=torch.Generator().manual_seed(7)).to(dtype) * 3  # [B, H]
    assert torch.equal(DecodeRmsNorm(theirs)(x), theirs(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotation_with_signed_sin_is_transformers_bit_for_bit(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 4, 1, 16, generator=gen).to(dtype) for _ in range(2))  # [B, n, 1, d]
    cos, sin = (torch.randn(2, 1, 16, generator=gen).to(dtype) for _ in range(2))  # [B, 1, d]
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)  # [B, n, 1, d]
    signed = torch.cat([-sin[..., :8], sin[..., 8:]], dim=-1)  # [B, 1, d]
    ours = _rotated(torch.cat([q, k], dim=1)[:, :, 0], cos, signed)  # [B, 2n, d]
    assert torch.equal(ours, torch.cat([expected_q, expected_k], dim=1)[:, :, 0])


def _ops_per_step(runtime: ExecutorRuntime) -> int:
    cache = runtime.new_cache()
    runtime.forward_logits(prompt_ids(6), cache, keep=1)
    token = torch.tensor([[5]])
    runtime.forward_logits(token, cache, keep=1)
    with profile() as prof:
        runtime.forward_logits(token, cache, keep=1)
    return sum(1 for event in prof.events() if event.name.startswith("aten::"))


@pytest.mark.parametrize("path", list(gemv_paths.candidates(1, torch.bfloat16)))
def test_decode_step_op_count_stays_trimmed(make_runtime, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Whichever op the float few-row table chooses (moeqos.executor.quant.gemv_paths)."""
    timer = lambda ops: {name: 0.1 if name == path else 1.0 for name in ops}  # noqa: E731
    monkeypatch.setattr(gemv_paths, "PATHS", gemv_paths.GemvPaths(timer))
    runtime = make_runtime(Plan.uniform(LAYERS, EXPERTS, "bf16", "cpu"), dense_precision="bf16")
    assert runtime.decoder is not None
    ops = _ops_per_step(runtime)
    ceiling = STEP_OPS if packed_bf16_fits(Precision.BF16, torch.device("cpu")) else STEP_OPS_UNPACKED
    assert ops <= ceiling, f"{ops} aten ops in a {LAYERS}-layer decode step"
