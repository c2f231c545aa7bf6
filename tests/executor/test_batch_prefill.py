"""Prefill of joining streams together (moeqos.executor.batch_prefill) on the tiny model, real forward
passes: each left-padded row's logits and KV columns are its prompt's alone, and its padding is zero."""

from __future__ import annotations

import threading

import pytest
import torch
from moeqos.executor.batch_prefill import prefill_together
from moeqos.executor.dense_part import DenseSlot
from moeqos.executor.kv_cache import KvCache
from torch import nn
from torch.profiler import ProfilerActivity, profile

from tests.executor.tiny import prompt_ids

PROMPTS = [prompt_ids(n, seed=s)[0].tolist() for n, s in ((5, 1), (11, 2), (3, 3))]


def _alone(runtime, prompt: list[int]) -> tuple[torch.Tensor, KvCache]:
    cache = KvCache()
    return runtime.forward_logits(torch.tensor([prompt]), cache, keep=1)[0, -1], cache  # [V]


def test_each_padded_row_holds_what_its_prompt_alone_gives(runtime) -> None:
    logits, cache, lengths = prefill_together(runtime, PROMPTS, "cpu")  # [A, V]
    assert lengths == [5, 11, 3] and cache.rows == 3 and cache.width == 11
    for row, prompt in enumerate(PROMPTS):
        alone, own = _alone(runtime, prompt)
        torch.testing.assert_close(logits[row], alone, rtol=1e-4, atol=1e-4)
        pad = cache.width - len(prompt)
        for layer in range(len(cache.keys)):
            keys, values = cache.filled(layer)  # [A, h, W, d]
            own_keys, own_values = own.filled(layer)  # [1, h, n, d]
            torch.testing.assert_close(keys[row, :, pad:], own_keys[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(values[row, :, pad:], own_values[0], rtol=1e-4, atol=1e-4)
            assert not keys[row, :, :pad].any() and not values[row, :, :pad].any()


def test_prompts_of_one_length_need_no_mask(runtime) -> None:
    """Nothing to pad: the pass is each prompt's own, one prompt's exactly the single prefill."""
    seen: list[object] = []
    forward = runtime.forward_logits

    def recording(token_ids, cache=None, keep=0, attention_mask=None, position_ids=None):
        seen.append(attention_mask)
        return forward(token_ids, cache, keep, attention_mask, position_ids)

    runtime.forward_logits = recording
    logits, _, _ = prefill_together(runtime, [PROMPTS[0]], "cpu")
    assert seen == [None]
    torch.testing.assert_close(logits[0], _alone(runtime, PROMPTS[0])[0], rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(1, 7, 16), (3, 7, 16)])
def test_a_dense_slot_reads_the_last_position_with_one_mm(shape) -> None:
    """Regression: for a [B, 1, in] slice (the head on a prefill's last position) of a weight needing no
    grad, matmul took a bmm that copies the whole weight ([B, in, out]) on every call: on the default
    model 57 MB and 18x the mm's time, each prefill. The slot flattens to [B, in] first."""
    linear = nn.Linear(16, 32, bias=False).requires_grad_(False)
    slot = DenseSlot("head", linear, None, threading.local())
    x = torch.randn(*shape)[:, -1:]  # [B, 1, in], a view of the last position
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as trace:
        y = slot(x)  # [B, 1, out]
    ops = {event.name for event in trace.events()}
    assert "aten::bmm" not in ops and "aten::mm" in ops
    torch.testing.assert_close(y, x @ linear.weight.t())
