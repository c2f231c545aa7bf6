"""Prompts in and text out for one model: its tokenizer (if the directory has one), checked token ids,
end-of-sequence ids, and a thread-safe decoder for streaming."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from moeqos.core.errors import InvalidArgument

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class PromptCodec:
    """The model's tokenizer (None: token-id prompts only) behind one lock, and its vocabulary."""

    def __init__(self, tokenizer: Any, hf_config: Any) -> None:
        self.tokenizer = tokenizer
        self.hf_config = hf_config
        self._lock = threading.Lock()
        """Fast tokenizers may raise "Already borrowed" when one instance is used from two threads."""

    @classmethod
    def load(cls, directory: Path, hf_config: Any) -> PromptCodec:
        """The codec of a checkpoint directory, with its tokenizer when it has one."""
        return cls(_load_tokenizer(directory), hf_config)

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt (text needs the tokenizer); InvalidArgument when empty or out of vocab."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidArgument("text prompts need a tokenizer; this model directory has none")
            with self._lock:
                ids = list(self.tokenizer.encode(prompt)) if prompt else []
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise InvalidArgument("the prompt is empty")
        vocab = int(self.hf_config.vocab_size)
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidArgument(f"prompt token ids must be in [0, {vocab})")
        return ids

    def encode_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of a conversation of (role, content) turns rendered with the tokenizer's chat
        template, ending with the assistant's turn to speak; InvalidArgument without a template."""
        if not messages:
            raise InvalidArgument("the conversation has no messages")
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise InvalidArgument("this model's tokenizer has no chat template; send a text prompt")
        turns = [{"role": role, "content": content} for role, content in messages]
        from jinja2 import TemplateError

        with self._lock:
            try:
                text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            except TemplateError as exc:  # e.g. roles out of the order the template requires
                raise InvalidArgument(f"the chat template refused the conversation: {exc}") from exc
            # the template writes the special tokens (BOS, turn markers) itself
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        return self.encode(ids)

    def eos_ids(self) -> set[int]:
        """Token ids that end a generation: the model config's and the tokenizer's."""
        ids = self.hf_config.eos_token_id
        found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            found.add(int(self.tokenizer.eos_token_id))
        return found

    def decoder(self) -> Callable[[list[int]], str] | None:
        """Token ids to text (special tokens skipped), or None without a tokenizer."""
        tokenizer = self.tokenizer
        if tokenizer is None:
            return None

        def decode(ids: list[int]) -> str:
            with self._lock:
                return str(tokenizer.decode(ids, skip_special_tokens=True))

        return decode


def _load_tokenizer(directory: Path) -> Any:
    """The directory's tokenizer, or None when it has none (token-id prompts only)."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))
