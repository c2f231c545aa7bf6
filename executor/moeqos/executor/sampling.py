"""Request parameters and next-token choice: greedy, or sampled with temperature, top-k and top-p.

Sampling happens on the CPU in fp32 with a per-request `torch.Generator`, so a fixed seed gives the
same tokens whatever the execution device and whatever other requests run meanwhile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.core.service_types import Sampling

MIN_TEMPERATURE = 1e-3
"""Smallest non-zero sampling temperature accepted (below it, use 0: greedy)."""
MIN_TOP_P = 1e-6
"""Smallest nucleus mass accepted."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes."""

    max_tokens: int = 64
    """Tokens to generate at most."""
    temperature: float = 0.0
    """0 means greedy; otherwise logits are divided by it before sampling."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens whose probabilities sum to at least this, in (0, 1]."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 means no limit."""
    seed: int | None = None
    """Seed of the request's own random generator; None picks one at random."""
    stop: tuple[str, ...] = ()
    """Generation ends when the text contains one of these (the stop string is not returned)."""

    @classmethod
    def of(cls, sampling: Sampling) -> SamplingParams:
        """The parameters of a service request's sampling (an absent top_p is 1: no nucleus cut)."""
        return cls(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=1.0 if sampling.top_p is None else sampling.top_p,
            top_k=sampling.top_k,
            seed=sampling.seed,
            stop=sampling.stop,
        )

    def validate(self, prompt_tokens: int, context_length: int) -> None:
        """InvalidArgument / OutOfRange for values no request can use."""
        numbers = (self.temperature, self.top_p)
        if any(not isinstance(x, (int, float)) or math.isnan(x) for x in numbers):
            raise InvalidArgument(f"temperature and top_p must be numbers, got {numbers}")
        if self.max_tokens <= 0:
            raise InvalidArgument(f"max_tokens must be positive, got {self.max_tokens}")
        if self.temperature < 0 or math.isinf(self.temperature):
            raise InvalidArgument(f"temperature must be finite and >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}")
        # Below these floors fp32 sampling breaks (logits / 1e-300 overflow to inf; a top_p of 1e-300
        # rounds to 0 and masks every token): answer clearly instead.
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise OutOfRange(
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {self.temperature:g}"
            )
        if self.top_p < MIN_TOP_P:
            raise OutOfRange(f"top_p must be at least {MIN_TOP_P:g}, got {self.top_p:g}")
        if self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise InvalidArgument("stop strings must not be empty")
        if prompt_tokens + self.max_tokens > context_length:
            raise OutOfRange(
                f"prompt ({prompt_tokens} tokens) + max_tokens ({self.max_tokens}) exceeds the "
                f"context length {context_length}"
            )

    def generator(self) -> torch.Generator:
        """The request's own generator, seeded."""
        generator = torch.Generator(device="cpu")
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The next token id from last-position logits [V]."""
    logits = logits.detach().to("cpu", torch.float32)  # [V]
    if params.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / params.temperature  # [V]
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # [V]
    probs = torch.softmax(logits, dim=-1)  # [V]
    if params.top_p < 1:
        probs = _nucleus(probs, params.top_p)  # [V]
    return int(torch.multinomial(probs, 1, generator=generator))


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest most-likely set whose mass reaches top_p."""
    sorted_probs, order = torch.sort(probs, descending=True)  # [V], [V]
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # [V] mass of more likely tokens
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # [V]
    return torch.zeros_like(probs).scatter(0, order, sorted_probs)  # [V]
