"""The OpenAI request and response shapes: request bodies checked into `GenerationRequest`, and the
bodies and stream chunks of `/v1/completions` and `/v1/chat/completions`.

Only what moeqos can honour is accepted: one choice (`n` 1), text prompts, no logprobs, no tools; a
field asking for more is a 400 naming it. Fields that only tune billing or tracing (`user`,
`metadata`, ...) are ignored, as other OpenAI-compatible servers do.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from moeqos.core.service_types import ChatMessage, GenerationStats, Sampling
from moeqos.gateway.errors import bad_request

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's documented default for `/v1/completions`."""
MAX_STOP_STRINGS = 4

_FINISH = {"length": "length", "stop": "stop", "eos": "stop", "cancelled": "stop"}
"""Executor finish reasons to OpenAI's."""


@dataclass(frozen=True)
class GenerationRequest:
    """A checked completion or chat request."""

    model: str
    prompt: str | tuple[ChatMessage, ...]
    """Text for `/v1/completions`; the conversation for `/v1/chat/completions`."""
    sampling: Sampling
    stream: bool
    include_usage: bool
    """`stream_options.include_usage`: a last chunk with the usage counts."""

    @property
    def chat(self) -> bool:
        return not isinstance(self.prompt, str)


def parse_completion(body: Any) -> GenerationRequest:
    """A `/v1/completions` body checked (400 on anything moeqos cannot honour)."""
    body = _object(body)
    _refuse(body, echo=False, suffix=None, best_of=1)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("`prompt` must be a non-empty string (or a list of one)", "prompt")
    return _request(body, prompt, "max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)


def parse_chat(body: Any, default_max_tokens: int) -> GenerationRequest:
    """A `/v1/chat/completions` body checked; `max_completion_tokens` is the newer `max_tokens`."""
    body = _object(body)
    _refuse(body, tools=None, functions=None, top_logprobs=None)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty list", "messages")
    turns = tuple(_message(m, i) for i, m in enumerate(messages))
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return _request(body, turns, key, default_max_tokens)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _refuse(body: dict[str, Any], **defaults: Any) -> None:
    """400 for a field set to anything but its default (a feature moeqos does not have)."""
    for name, default in {"n": 1, "logprobs": None, **defaults}.items():
        value = body.get(name)
        if value is not None and value != default and not (name == "logprobs" and value is False):
            raise bad_request(f"`{name}` is not supported (moeqos returns one choice without logprobs)", name)


def _message(message: Any, index: int) -> ChatMessage:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise bad_request("each message must be an object with a string `role`", param)
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text parts carry anything moeqos can read
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise bad_request("only text content parts are supported", f"{param}.content")
        content = "".join(str(p.get("text", "")) for p in content)
    if content is None and message["role"] == "assistant":
        content = ""
    if not isinstance(content, str):
        raise bad_request("`content` must be a string or a list of text parts", f"{param}.content")
    role = "system" if message["role"] == "developer" else message["role"]  # OpenAI's newer name
    return ChatMessage(role, content)


def _request(
    body: dict[str, Any], prompt: str | tuple[ChatMessage, ...], max_key: str, default_max: int
) -> GenerationRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("`model` must be a non-empty string", "model")
    stream = body.get("stream") or False
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise bad_request("`stream` must be a boolean and `stream_options` an object", "stream")
    sampling = Sampling(
        max_tokens=_integer(body, max_key, default_max, low=1),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", None, 1e-6, 1.0),
        seed=_integer(body, "seed", None, low=0),
        stop=_stop(body.get("stop")),
    )
    return GenerationRequest(model, prompt, sampling, stream, bool(options.get("include_usage")))


def _integer(body: dict[str, Any], name: str, default: Any, low: int) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad_request(f"`{name}` must be an integer >= {low}", name)
    return value


def _number(body: dict[str, Any], name: str, default: Any, low: float, high: float) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad_request(f"`{name}` must be a number in [{low:g}, {high:g}]", name)
    return float(value)


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value or []
    if not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"`stop` must be a string or a list of at most {MAX_STOP_STRINGS}", "stop")
    if any(not isinstance(s, str) or not s for s in stops):
        raise bad_request("stop sequences must be non-empty strings", "stop")
    return tuple(stops)


# ----- responses ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """What every body and chunk of one response shares."""

    request: GenerationRequest
    id: str
    created: int

    @classmethod
    def start(cls, request: GenerationRequest) -> Reply:
        prefix = "chatcmpl" if request.chat else "cmpl"
        return cls(request, f"{prefix}-{uuid.uuid4().hex}", int(time.time()))

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.request.chat else "text_completion"
        if chunk and self.request.chat:
            kind += ".chunk"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.request.model}

    def whole(self, text: str, stats: GenerationStats) -> dict[str, Any]:
        """The non-streamed response body."""
        return self._envelope(False) | {"choices": [self._choice(text, finish(stats))], "usage": usage(stats)}

    def chunk(self, text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
        """One stream chunk; for chat, `text` None is the opening chunk that names the role."""
        if self.request.chat:
            delta = {"role": "assistant", "content": ""} if text is None else {"content": text}
            choice = {
                "index": 0,
                "delta": delta if finish_reason is None else {},
                "finish_reason": finish_reason,
            }
        else:
            choice = self._choice(text or "", finish_reason)
        return self._envelope(True) | {"choices": [choice]}

    def usage_chunk(self, stats: GenerationStats) -> dict[str, Any]:
        """The last chunk with `stream_options.include_usage`: no choices, the usage counts."""
        return self._envelope(True) | {"choices": [], "usage": usage(stats)}

    def _choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        if self.request.chat:
            message = {"role": "assistant", "content": text}
            return {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        return {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}


def finish(stats: GenerationStats) -> str:
    """OpenAI's finish_reason for the executor's: `length`, else `stop`."""
    return _FINISH.get(stats.finish_reason, "stop")


def usage(stats: GenerationStats) -> dict[str, int]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
    }
