"""Tiny random Mixtral checkpoints for tests and demos (real HF format, written offline in seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "a mixture of experts routes every token to a few experts",
    "each expert may run in its own precision and live in its own memory tier",
    "the planner picks a plan that meets the target speed and quality",
    "tokens per second rise when the experts take fewer bytes",
    "perplexity rises a little when the experts are quantized to four bits",
    "hello world, this is a small test of the moeqos executor runtime.",
)
SPECIALS = ("<unk>", "<s>", "</s>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
"""A ChatML-like chat template, so the tiny model serves chat requests as real instruct models do."""


def make_tiny_mixtral(
    directory: Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_experts: int = 4,
    top_k: int = 2,
    vocab_size: int = 256,
    seed: int = 0,
    with_tokenizer: bool = True,
) -> Path:
    """Write a random Mixtral checkpoint (per-expert safetensors keys) and a small tokenizer; return the dir."""
    from transformers import MixtralConfig, MixtralForCausalLM

    directory = Path(directory)
    config = MixtralConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=num_experts,
        num_experts_per_tok=top_k,
        max_position_embeddings=1024,
        initializer_range=0.08,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = MixtralForCausalLM(config)
    model.save_pretrained(str(directory))
    _check_per_expert_keys(directory)
    if with_tokenizer:
        write_tokenizer(directory, vocab_size)
    return directory


def _check_per_expert_keys(directory: Path) -> None:
    """transformers 5 converts fused experts back to per-expert keys on save; make sure it did."""
    with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    if not any(".block_sparse_moe.experts.0.w1.weight" in k for k in keys):
        raise RuntimeError(f"{directory}: save_pretrained wrote no per-expert keys: {keys[:5]}...")


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    """A BPE tokenizer trained in-process on a few sentences (Metaspace keeps the spaces), with a chat
    template, saved as a PreTrainedTokenizerFast so `AutoTokenizer.from_pretrained(directory)` loads it offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    tokenizer.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    data = json.loads(config_path.read_text())
    data["model_max_length"] = 1024
    config_path.write_text(json.dumps(data, indent=2))
