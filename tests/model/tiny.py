"""Tiny stand-ins for the default model's source: a random dense Llama and a word-level tokenizer."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = "the of to a in and 's that for is N <unk> $ it said on by at as from with mr. was be million".split()  # noqa: SIM905


def tiny_llama_config(tied: bool = True) -> LlamaConfig:
    """A dense Llama small enough to run in milliseconds, with GQA and a non-default rope theta."""
    return LlamaConfig(
        vocab_size=len(WORDS) + 8,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 12345.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
    )


def tiny_dense(seed: int = 0, tied: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(tied)).eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a few frequent Penn Treebank words, everything else `[UNK]`."""
    vocab = {"[UNK]": 0, **{word: i + 1 for i, word in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
