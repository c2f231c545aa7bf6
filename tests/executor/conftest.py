"""Fixtures for the executor tests: tiny random Mixtral checkpoints, runtimes on them, and the
transformers reference model loaded from the same checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from moeqos.core.plan import Plan
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.testing import make_tiny_mixtral

from tests.executor.tiny import fp32_plan


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hidden 64, intermediate 128, 2 layers, 4 experts, top-2, with a tokenizer."""
    return make_tiny_mixtral(tmp_path_factory.mktemp("tiny") / "tiny-mixtral")


@pytest.fixture(scope="session")
def reference_model(tiny_dir: Path) -> Any:
    """transformers' own MixtralForCausalLM on the same checkpoint, fp32."""
    from transformers import MixtralForCausalLM

    return MixtralForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()


@pytest.fixture
def make_runtime(tiny_dir: Path, tmp_path: Path) -> Callable[..., ExecutorRuntime]:
    """Build a runtime on the tiny checkpoint; keyword arguments go to ExecutorConfig."""

    def make(plan: Plan | None = None, **overrides: Any) -> ExecutorRuntime:
        options: dict[str, Any] = {"model_dir": tiny_dir, "dense_precision": "fp32"}
        options["variant_cache_dir"] = tmp_path / "variants"
        return ExecutorRuntime.load(ExecutorConfig(**{**options, **overrides}), plan or fp32_plan())

    return make


@pytest.fixture
def runtime(make_runtime: Callable[..., ExecutorRuntime]) -> ExecutorRuntime:
    """A fresh runtime serving the all-fp32 plan (dense fp32)."""
    return make_runtime()
