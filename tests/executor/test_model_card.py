"""The default model's card says what its weights really are (issue 20): a Q4_1 / Q8_0 GGUF dequantized
to bf16, so int4 with groups of 32 is nearly lossless on it by construction."""

from __future__ import annotations

from types import SimpleNamespace

from moeqos.executor.default_model.card import render_card
from moeqos.executor.default_model.location import RECIPE


def test_card_states_the_source_quantisation_and_its_group_size() -> None:
    config = SimpleNamespace(
        num_hidden_layers=30,
        hidden_size=576,
        intermediate_size=1536,
        vocab_size=49152,
        tie_word_embeddings=True,
    )
    measured = {
        "probe_tokens": 1024,
        "probe_corpus": "ptb:test",
        "context": 512,
        "ppl_dense": 80.0,
        "diff_fp32": 1e-5,
        "diff_tokens": 64,
        "ppl_stored": 80.1,
        "diff_stored": 1e-2,
    }
    card = render_card(RECIPE, config, {"file": "x.gguf", "sha256": "ab"}, measured, shards=6)
    for fact in (
        "Q4_1",
        "Q8_0",
        "blocks of 32",
        "`int4g32`",
        "nearly losslessly by construction",
        "bfloat16",
    ):
        assert fact in card
