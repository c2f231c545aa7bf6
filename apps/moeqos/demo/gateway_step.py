"""The demo's last step: one chat completion per QoS class through the OpenAI-compatible gateway.

Plain HTTP from the standard library, the very request an OpenAI client sends (the demo needs no
client library); the curl equivalent is printed so it can be tried by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.request import Request, urlopen

QUESTION = "What is the capital of France? Answer in one word."
TIMEOUT_S = 600.0


def _call(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = Request(url, data=data, headers={"Content-Type": "application/json"})
    with urlopen(request, timeout=TIMEOUT_S) as reply:
        return json.loads(reply.read())


def ask_gateway(base_url: str, say: Callable[[str], None], max_tokens: int = 16) -> dict[str, Any]:
    """Ask QUESTION of every model (QoS class) the gateway lists; their answers and usage by model."""
    models = [m["id"] for m in _call(f"{base_url}/v1/models")["data"]]
    answers: dict[str, Any] = {}
    for model in models:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        reply = _call(f"{base_url}/v1/chat/completions", body)
        choice = reply["choices"][0]
        answers[model] = {
            "answer": choice["message"]["content"],
            "finish_reason": choice["finish_reason"],
            "usage": reply["usage"],
        }
        say(f"gateway {model} > {QUESTION} -> {choice['message']['content']!r}")
    say(
        f"try it: curl {base_url}/v1/chat/completions -H 'Content-Type: application/json' -d "
        f"'{json.dumps(body | {'stream': True})}'"
    )
    return answers
