"""The official openai client against the gateway in front of an executor serving the real default model
(SmolLM2-135M-Instruct upcycled): the chat template makes it answer. Slow: loads the real model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.gateway_harness import RunningGateway, start_gateway
from tests.service.service_harness import Stack, address

pytestmark = pytest.mark.slow

MODEL = "smollm2-moe8:fast"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    from moeqos.executor.default_model.location import ensure_default_model

    stack = Stack(ensure_default_model(progress=False), tmp_path_factory.mktemp("p") / "profile.json")
    try:
        executor = stack.executor(profile_path=None)
        running = start_gateway({MODEL: (address(executor.port),)})
        yield running
        running.close()
    finally:
        stack.close()


def test_chat_answers_the_question_streamed_or_not(gateway: RunningGateway) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="-", max_retries=0, timeout=300)
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    answer = reply.choices[0].message.content or ""
    assert "paris" in answer.lower(), answer
    assert reply.choices[0].finish_reason == "stop"  # the model ended its turn (<|im_end|>)

    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer


def test_completion_continues_a_prompt(gateway: RunningGateway) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="-", max_retries=0, timeout=300)
    reply = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    assert reply.choices[0].text.strip()
