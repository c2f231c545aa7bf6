"""The executor: runs a Mixtral-family model with per-expert precision and memory-tier placement (torch).

Public names load lazily (importing `executor` does not import torch):
`ExecutorConfig` (moeqos.executor.config), `ExecutorRuntime`, `PlanSwitch` (moeqos.executor.runtime),
`SamplingParams` (moeqos.executor.generation), `StoreStats` (moeqos.executor.store), `make_tiny_mixtral`
(moeqos.executor.testing). What the runtime reports (SwitchReport, GenerationEvent, GenerationStats,
Evaluation) are the service's domain types, in moeqos.core.service_types.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExecutorConfig": "moeqos.executor.config",
    "ExecutorRuntime": "moeqos.executor.runtime",
    "PlanSwitch": "moeqos.executor.runtime",
    "SamplingParams": "moeqos.executor.generation",
    "StoreStats": "moeqos.executor.store",
    "make_tiny_mixtral": "moeqos.executor.testing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'executor' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
