"""Build the default model directory: load the dense source, upcycle, write, measure, publish atomically.

Everything is written into a temporary sibling directory; the marker file goes in last, then the
directory is renamed into place. A crash leaves no half-written model under the final name, and a
directory without a valid marker is rebuilt by `moeqos.executor.default_model.location.ensure_default_model`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from moeqos.core.corpora import REPORTING_CORPUS, load_corpus, tokenize_prefix
from moeqos.core.progress import waiting
from moeqos.executor.default_model.card import render_card
from moeqos.executor.default_model.check import load_fp32, max_logit_difference, perplexity
from moeqos.executor.default_model.location import MARKER_FILE, read_marker, source_size
from moeqos.executor.default_model.upcycle import UpcycleRecipe, upcycle
from moeqos.executor.default_model.writer import shard_layers, write_checkpoint
from moeqos.executor.processes import process_alive
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

PROBE_TOKENS = 4096
PROBE_CONTEXT = 512
DIFF_TOKENS = 256
"""Logit differences are taken on one sequence of this many tokens (the probe's start)."""


def build_model(source: Path, target: Path, recipe: Mapping[str, Any], progress: bool = True) -> Path:
    """Build the upcycled model of `source` (a GGUF file or a dense HF checkpoint directory) into `target`."""
    started = time.monotonic()
    _check_replaceable(target)
    with _step(progress, f"loading dense model from {source}"):
        dense, tokenizer = load_dense(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(target)
    scratch = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        marker = _write_model(dense, tokenizer, source, scratch, recipe, progress)
        marker["build_seconds"] = round(time.monotonic() - started, 1)
        (scratch / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        _publish(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _say(progress, f"default model ready in {target} ({time.monotonic() - started:.0f} s)")
    return target


def load_dense(source: Path) -> tuple[Any, Any]:
    """The dense fp32 model and its tokenizer, from a GGUF file or a checkpoint directory, offline."""
    if source.is_dir():
        kwargs: dict[str, Any] = {}
        directory = source
    else:
        kwargs, directory = {"gguf_file": source.name}, source.parent
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, local_files_only=True, **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, **kwargs)
    return model.eval(), tokenizer


def _write_model(
    dense: Any, tokenizer: Any, source: Path, out: Path, recipe: Mapping[str, Any], progress: bool
) -> dict[str, Any]:
    upcycle_recipe = UpcycleRecipe(
        recipe["num_experts"], recipe["top_k"], recipe["router_seed"], recipe["router_std"]
    )
    dtype = getattr(torch, recipe["dtype"])
    layers = dense.config.num_hidden_layers
    with tqdm(total=layers, desc="upcycling layers", file=sys.stderr, disable=not progress) as bar:
        write_checkpoint(
            dense, out, upcycle_recipe, dtype, recipe["layers_per_shard"], on_layer=lambda _: bar.update()
        )
    tokenizer.save_pretrained(out)
    with _step(progress, "measuring the upcycled model against the dense one"):
        measured = measure(dense, tokenizer, out, upcycle_recipe)
    source_info = {"file": source.name, "size": source_size(source), "sha256": checksum(source)}
    shards = len(shard_layers(layers, recipe["layers_per_shard"]))
    card = render_card(recipe, dense.config, source_info, measured, shards)
    (out / "README.md").write_text(card)
    return {"recipe": dict(recipe), "source": source_info, "measured": measured}


def measure(dense: Any, tokenizer: Any, model_dir: Path, recipe: UpcycleRecipe) -> dict[str, Any]:
    """Equivalence of the fp32 in-memory upcycle and of the stored checkpoint with the dense model."""
    probe = tokenize_prefix(load_corpus(REPORTING_CORPUS), tokenizer, PROBE_TOKENS)
    head = probe.token_ids[:DIFF_TOKENS]
    exact = upcycle(dense, recipe)
    diff_fp32 = max_logit_difference(dense, exact, head)
    del exact
    stored = load_fp32(model_dir)
    ppl_dense, scored = perplexity(dense, probe.token_ids, PROBE_CONTEXT)
    ppl_stored, _ = perplexity(stored, probe.token_ids, PROBE_CONTEXT)
    return {
        "probe_corpus": probe.corpus,
        "probe_tokens": len(probe.token_ids),
        "tokens_scored": scored,
        "context": PROBE_CONTEXT,
        "diff_tokens": len(head),
        "diff_fp32": diff_fp32,
        "diff_stored": max_logit_difference(dense, stored, head),
        "ppl_dense": ppl_dense,
        "ppl_stored": ppl_stored,
    }


def checksum(source: Path) -> str:
    """sha256 of the source file, or of a directory's files (relative names and contents, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for path in files:
        if source.is_dir():
            digest.update(str(path.relative_to(source)).encode() + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _publish(scratch: Path, target: Path) -> None:
    """Rename the finished `scratch` into `target`, replacing an incomplete or outdated model there."""
    if target.exists():
        _check_replaceable(target)
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
        shutil.rmtree(old)
    scratch.rename(target)


def _check_replaceable(path: Path) -> None:
    """Raise FileExistsError unless `path` is absent, empty, or a model this builder made (any recipe).

    A checkpoint without our marker is someone else's model (MOEQOS_MODEL_DIR may point at one): never
    replaced. Our own half-written builds live only in scratch directories, see `_remove_stale_scratch`.
    """
    if not path.exists() or (path.is_dir() and (not any(path.iterdir()) or read_marker(path) is not None)):
        return
    raise FileExistsError(
        f"{path} exists and is not a model built by `moeqos model prepare`; refusing to replace it "
        "(name the model with --model, or choose another --out / MOEQOS_MODEL_DIR)"
    )


def _remove_stale_scratch(target: Path) -> None:
    """Delete scratch directories of earlier builds of `target` whose process is gone (a crash)."""
    for scratch in target.parent.glob(f".{target.name}.tmp-*"):
        pid = scratch.name.rsplit("-", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(scratch, ignore_errors=True)


def _step(progress: bool, what: str) -> contextlib.AbstractContextManager[Any]:
    """A heartbeat on stderr for a step without a progress bar (measuring takes minutes on a small CPU,
    so a silent one would look stuck)."""
    return waiting(what, after=0.0) if progress else contextlib.nullcontext()


def _say(progress: bool, message: str) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)
