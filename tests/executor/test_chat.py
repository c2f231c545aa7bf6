"""Conversations rendered with the tokenizer's chat template (the executor's side of chat completions)."""

from __future__ import annotations

import pytest
from moeqos.core.errors import InvalidArgument
from moeqos.executor.runtime import ExecutorRuntime

TURNS = [("system", "be brief"), ("user", "hello world")]


def test_conversation_is_the_rendered_template_without_extra_special_tokens(runtime: ExecutorRuntime) -> None:
    tokenizer = runtime.tokenizer
    rendered = "<s>system\nbe brief</s>\n<s>user\nhello world</s>\n<s>assistant\n"
    assert (
        tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in TURNS], tokenize=False, add_generation_prompt=True
        )
        == rendered
    )
    assert runtime.encode_chat(TURNS) == list(tokenizer.encode(rendered, add_special_tokens=False))


def test_without_a_template_or_messages_a_conversation_is_refused(runtime: ExecutorRuntime) -> None:
    with pytest.raises(InvalidArgument, match="no messages"):
        runtime.encode_chat([])
    runtime.tokenizer.chat_template = None
    with pytest.raises(InvalidArgument, match="no chat template"):
        runtime.encode_chat(TURNS)


def test_a_conversation_the_template_refuses_is_an_invalid_argument(runtime: ExecutorRuntime) -> None:
    runtime.tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(InvalidArgument, match="roles must alternate"):
        runtime.encode_chat(TURNS)
