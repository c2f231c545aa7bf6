"""`moeqos model prepare|info|tiny`: build the embedded default model, describe a model directory of any
supported family, and write a tiny random checkpoint of one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from moeqos.core.precision import DEFAULT_GROUP_SIZE, Precision, expert_bytes
from moeqos.core.units import format_bytes
from moeqos.executor.default_model.location import (
    default_model_dir,
    ensure_default_model,
    read_marker,
    resolve_model_dir,
)

TINY_FAMILIES = ("deepseek_v3", "granitemoe", "mixtral", "olmoe", "qwen2_moe", "qwen3_moe")
"""The families `model tiny` writes, for its help (moeqos.executor.tiny_families.family_names, which
imports torch, is the source; a test keeps the two equal)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="prepare or describe the model to serve")
    commands = model.add_subparsers(dest="model_command", metavar="COMMAND", required=True)

    prepare = commands.add_parser(
        "prepare", help="build the default model (SmolLM2-135M upcycled to 8 experts) once, into the cache"
    )
    prepare.add_argument("--out", type=Path, help=f"model directory (default: {default_model_dir()})")
    prepare.add_argument("--force", action="store_true", help="rebuild even if a finished model is there")
    prepare.add_argument("--json", action="store_true", help="print the result as JSON")
    prepare.set_defaults(func=cmd_prepare)

    info = commands.add_parser(
        "info", help="print a model's family, shape and the bytes of one expert per precision"
    )
    where = info.add_mutually_exclusive_group()
    where.add_argument("dir", nargs="?", type=Path, help="model directory (same as --model)")
    where.add_argument("--model", help="model directory (default: the default model, built if needed)")
    info.add_argument("--json", action="store_true", help="print the result as JSON")
    info.set_defaults(func=cmd_info)

    tiny = commands.add_parser(
        "tiny", help="write a small random checkpoint of a MoE family (for tests and smoke tests)"
    )
    tiny.add_argument("--family", required=True, help=f"one of: {', '.join(TINY_FAMILIES)}")
    tiny.add_argument("--out", type=Path, required=True, help="directory to write (created)")
    tiny.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    tiny.add_argument("--json", action="store_true", help="print the result as JSON")
    tiny.set_defaults(func=cmd_tiny)


def cmd_prepare(args: argparse.Namespace) -> int:
    path = ensure_default_model(progress=True, model_dir=args.out, force=args.force)
    marker = read_marker(path) or {}
    result = {
        "model_dir": str(path),
        "bytes_on_disk": _disk_bytes(path),
        "measured": marker.get("measured", {}),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(path)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = model_info(resolve_model_dir(args.dir or args.model))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    plain = ("model_dir", "name", "family", "fingerprint", "num_layers", "moe_layers", "routed_experts")
    more = ("shared_slices", "num_experts", "top_k", "hidden_size", "intermediate_size", "vocab_size")
    for key in (*plain, *more, "dense_precision"):
        print(f"{key:18} {info[key]}")
    for key, label in (("dense_bytes", "dense weights"), ("bytes_on_disk", "on disk")):
        print(f"{label:18} {format_bytes(info[key])}")
    for key, label in (("expert_bytes", "one expert"), ("all_experts_bytes", "all experts")):
        print(f"{label:18} " + "  ".join(f"{p}={format_bytes(n)}" for p, n in info[key].items()))
    return 0


def model_info(model_dir: Path) -> dict[str, Any]:
    """Identity of the checkpoint in `model_dir`, the bytes of its dense weights as an executor with the
    default dense precision holds them, and the bytes of its experts in every precision."""
    from moeqos.executor.adapters import read_model
    from moeqos.executor.checkpoint import Checkpoint
    from moeqos.executor.config import DEFAULT_DENSE_PRECISION
    from moeqos.executor.identity import checkpoint_dense_bytes

    checkpoint = Checkpoint(model_dir)
    adapter, config, spec = read_model(model_dir)
    count = spec.num_layers * spec.num_experts
    per_expert = {
        str(p): expert_bytes(spec.hidden, spec.intermediate, p, DEFAULT_GROUP_SIZE) for p in Precision
    }
    return {
        "model_dir": str(model_dir),
        "name": model_dir.name,
        "family": adapter.model_type,
        "fingerprint": checkpoint.fingerprint(),
        "num_layers": spec.num_layers,
        "moe_layers": list(spec.moe_layers),
        "routed_experts": spec.num_routed,
        "shared_slices": spec.num_shared,
        "num_experts": spec.num_experts,
        "top_k": spec.top_k,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "vocab_size": int(config.vocab_size),
        "dense_precision": str(DEFAULT_DENSE_PRECISION),
        "dense_bytes": checkpoint_dense_bytes(checkpoint, adapter, config, DEFAULT_DENSE_PRECISION),
        "bytes_on_disk": _disk_bytes(model_dir),
        "group_size": DEFAULT_GROUP_SIZE,
        "expert_bytes": per_expert,
        "all_experts_bytes": {p: n * count for p, n in per_expert.items()},
    }


def cmd_tiny(args: argparse.Namespace) -> int:
    from moeqos.executor.tiny_families import make_tiny

    path = make_tiny(args.family, args.out, seed=args.seed)
    info = model_info(path)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(
            f"{path}  ({info['family']}: {info['num_layers']} MoE layers, {info['routed_experts']} experts "
            f"top-{info['top_k']}, {info['shared_slices']} shared slices)"
        )
    return 0


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
