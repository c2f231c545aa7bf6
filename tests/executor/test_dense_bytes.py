"""One count of a model's dense bytes: `moeqos model info`, the measured profile's identity and a what-if
description of the same shape all report what the executor really holds (routers in fp32)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from moeqos.cli.model_cmds import model_info
from moeqos.core.descriptions import ModelDescription
from moeqos.core.precision import Precision, dense_bytes
from moeqos.executor.runtime import ExecutorRuntime

from tests.executor.tiny import held_dense_bytes


def _description(model_dir: Path) -> ModelDescription:
    config = json.loads((model_dir / "config.json").read_text())
    return ModelDescription(
        model_dir.name,
        config["num_hidden_layers"],
        config["num_local_experts"],
        config["hidden_size"],
        config["intermediate_size"],
        config["num_experts_per_tok"],
        config["vocab_size"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        tied_embeddings=config["tie_word_embeddings"],
    )


def test_model_info_profile_and_whatif_agree_with_memory(
    tiny_dir: Path, make_runtime: Callable[..., ExecutorRuntime]
) -> None:
    runtime = make_runtime(dense_precision="bf16")
    held = held_dense_bytes(runtime.lm)  # what is really in memory
    assert runtime.model.dense_bytes == held
    assert (
        runtime.profile(list(range(3, 40)), "ids", max_tokens=32, repeats=1, window=32).model.dense_bytes
        == held
    )
    assert model_info(tiny_dir)["dense_bytes"] == held  # the checkpoint stores fp32; bf16 is what is held
    assert _description(tiny_dir).identity().dense_bytes == held


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16])
def test_served_dense_bytes_follow_the_dense_precision(
    make_runtime: Callable[..., ExecutorRuntime], precision: Precision
) -> None:
    runtime = make_runtime(dense_precision=str(precision))
    assert runtime.model.dense_bytes == held_dense_bytes(runtime.lm)


def test_routers_count_four_bytes_whatever_the_dense_precision() -> None:
    assert dense_bytes(10, 3, Precision.BF16) == 10 * 2 + 3 * 4
    assert dense_bytes(10, 3, Precision.FP32) == 10 * 4 + 3 * 4
    with pytest.raises(ValueError, match="float precision"):
        dense_bytes(10, 3, Precision.INT8)
