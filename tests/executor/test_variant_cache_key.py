"""A configured variant cache directory is keyed by the checkpoint's fingerprint, which reads sampled
bytes of its files: two checkpoints with one config, names, shapes and sizes (two fine-tunes of one
base) kept in one cache directory each compute with their own experts, and the same checkpoint loaded
again reads its files."""

from __future__ import annotations

from pathlib import Path

import torch
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor.checkpoint import Checkpoint
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.testing import make_tiny_mixtral

from tests.executor.tiny import EXPERTS, LAYERS, prompt_ids


def int4_logits(model: Path, cache: Path) -> tuple[torch.Tensor, ExecutorRuntime]:
    config = ExecutorConfig(model_dir=model, dense_precision="fp32", variant_cache_dir=cache)
    runtime = ExecutorRuntime.load(config, Plan.uniform(LAYERS, EXPERTS, Precision.INT4, "cpu"))
    return runtime.forward_logits(prompt_ids(10)), runtime  # [1, S, V]


def test_two_fine_tunes_of_one_base_in_one_cache_keep_their_own_experts(tmp_path: Path) -> None:
    first = make_tiny_mixtral(tmp_path / "first", seed=1, with_tokenizer=False)
    second = make_tiny_mixtral(tmp_path / "second", seed=2, with_tokenizer=False)
    assert Checkpoint(first).fingerprint() != Checkpoint(second).fingerprint()  # one config, shapes, sizes
    shared = tmp_path / "shared"
    int4_logits(first, shared)
    theirs, _ = int4_logits(second, shared)
    own, _ = int4_logits(second, tmp_path / "own")
    assert torch.equal(theirs, own)
    assert len([d for d in shared.iterdir() if d.is_dir()]) == 2


def test_the_same_checkpoint_loaded_again_reads_its_variant_files(tmp_path: Path) -> None:
    model = make_tiny_mixtral(tmp_path / "model", seed=3, with_tokenizer=False)
    before, first = int4_logits(model, tmp_path / "cache")
    assert first.factory.quantized > 0
    again, second = int4_logits(model, tmp_path / "cache")
    assert second.factory.quantized == 0  # every expert from the first load's files
    assert torch.equal(before, again)
