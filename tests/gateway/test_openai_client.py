"""The official `openai` client against a real gateway in front of a real executor on the tiny model:
chat and completions, streamed and not, usage, stop sequences, finish reasons, the chat template."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from moeqos.client import ExecutorClient, Sampling

from tests.gateway.conftest import FAST
from tests.gateway.gateway_harness import RunningGateway

HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_returns_the_greedy_answer_to_the_rendered_template(
    client: openai.OpenAI, executor_address: str, tiny_model: Path
) -> None:
    from transformers import AutoTokenizer

    rendered = AutoTokenizer.from_pretrained(str(tiny_model)).apply_chat_template(
        HELLO, tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<s>assistant\n")  # the tiny model's template, so a chat is not a plain prompt
    with ExecutorClient(executor_address) as direct:
        expected = direct.complete(rendered, Sampling(max_tokens=12, temperature=0.0))

    reply = client.chat.completions.create(model=FAST, messages=HELLO, max_tokens=12, temperature=0)  # type: ignore[arg-type]

    assert reply.object == "chat.completion" and reply.model == FAST
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == expected.stats.prompt_tokens
    assert reply.usage.completion_tokens == expected.stats.generated_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert choice.finish_reason == ("length" if expected.stats.finish_reason == "length" else "stop")


def test_chat_stream_carries_the_same_text_then_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=FAST, messages=HELLO, max_tokens=10, temperature=0)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model=FAST,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_completion_stops_at_length_and_streams_the_same_text(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=FAST, prompt="the quick brown fox", max_tokens=6, temperature=0)
    assert whole.object == "text_completion"
    assert whole.usage is not None and whole.usage.completion_tokens <= 6
    if whole.usage.completion_tokens == 6:
        assert whole.choices[0].finish_reason == "length"

    chunks = list(
        client.completions.create(
            model=FAST, prompt="the quick brown fox", max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stop_sequence_cuts_the_text_and_finishes_with_stop(client: openai.OpenAI) -> None:
    free = client.completions.create(model=FAST, prompt="a mixture of", max_tokens=24, temperature=0)
    text = free.choices[0].text
    stripped = text.strip()
    assert len(stripped) >= 4, f"the tiny model said too little to pick a stop string from: {text!r}"
    stop = stripped[len(stripped) // 2 : len(stripped) // 2 + 2]

    cut = client.completions.create(
        model=FAST, prompt="a mixture of", max_tokens=24, temperature=0, stop=[stop]
    )

    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_models_lists_the_qos_classes(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [FAST]
    assert client.models.retrieve(FAST).id == FAST


def test_errors_have_the_openai_shape_and_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope:fast", messages=HELLO)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found" and missing.value.param == "model"

    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model=FAST, messages=HELLO, temperature=3)  # type: ignore[arg-type]
    assert hot.value.param == "temperature"

    # checked by the executor (the tiny model's context is 1024 tokens): INVALID_ARGUMENT becomes 400
    with pytest.raises(openai.BadRequestError, match=r"max_tokens|context"):
        client.completions.create(model=FAST, prompt="hello", max_tokens=5000)
