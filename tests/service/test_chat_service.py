"""Generate/Complete with a conversation: rendered with the model's chat template by the executor."""

from __future__ import annotations

import grpc
import pytest
from moeqos.client import ChatMessage, ExecutorClient, Sampling
from moeqos.proto.executor.v1 import executor_pb2 as ex
from moeqos.proto.executor.v1 import executor_pb2_grpc as ex_grpc

HELLO = [ChatMessage("user", "hello world")]
RENDERED = "<s>user\nhello world</s>\n<s>assistant\n"
"""HELLO under the tiny model's chat template (moeqos.executor.testing.CHAT_TEMPLATE)."""


def test_conversation_generates_as_its_rendered_prompt(executor_address: str) -> None:
    greedy = Sampling(max_tokens=6, temperature=0.0)
    with ExecutorClient(executor_address) as client:
        chat = client.complete(HELLO, greedy)
        plain = client.complete(RENDERED, greedy)
        streamed = list(client.generate(HELLO, greedy))
    assert chat.text == plain.text == "".join(e.text for e in streamed)
    assert chat.stats.prompt_tokens == plain.stats.prompt_tokens


def test_prompt_and_messages_together_are_invalid(executor_address: str) -> None:
    request = ex.GenerateRequest(prompt="hi", messages=[ex.ChatMessage(role="user", content="hi")])
    request.sampling.max_tokens = 2
    with grpc.insecure_channel(executor_address) as channel, pytest.raises(grpc.RpcError) as refused:
        ex_grpc.ExecutorServiceStub(channel).Complete(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not both" in (refused.value.details() or "")
