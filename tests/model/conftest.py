"""Fixtures for the default-model tests: a tiny source checkpoint directory (dense model + word-level
tokenizer) that the builder can upcycle in a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model.tiny import tiny_dense, tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dense checkpoint directory (fp32 weights, config, tokenizer) usable as a build source."""
    directory = tmp_path_factory.mktemp("tiny-dense")
    tiny_dense(seed=1).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
