"""The executor: runs a Mixtral-family model with per-expert precision and memory-tier placement (torch).

Public names load lazily (importing `executor` does not import torch):
`ExecutorConfig` (executor.config), `ExecutorRuntime`, `SwitchReport` (executor.runtime),
`SamplingParams`, `GenerationEvent`, `GenerationStats` (executor.generation), `EvalResult`
(executor.evaluation), `StoreStats` (executor.store), `make_tiny_mixtral` (executor.testing).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExecutorConfig": "executor.config",
    "ExecutorRuntime": "executor.runtime",
    "SwitchReport": "executor.runtime",
    "SamplingParams": "executor.generation",
    "GenerationEvent": "executor.generation",
    "GenerationStats": "executor.generation",
    "EvalResult": "executor.evaluation",
    "StoreStats": "executor.store",
    "make_tiny_mixtral": "executor.testing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'executor' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
