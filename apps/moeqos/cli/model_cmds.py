"""`moeqos model prepare|info`: build the embedded default model, and describe a model directory."""

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

    info = commands.add_parser("info", help="print a model's shape and the bytes of one expert per precision")
    info.add_argument("--model", help="model directory (default: the default model, built if needed)")
    info.add_argument("--json", action="store_true", help="print the result as JSON")
    info.set_defaults(func=cmd_info)


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
    info = model_info(resolve_model_dir(args.model))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    plain = ("model_dir", "name", "fingerprint", "num_layers", "num_experts", "top_k", "hidden_size")
    for key in (*plain, "intermediate_size", "vocab_size", "dense_precision"):
        print(f"{key:18} {info[key]}")
    for key, label in (("dense_bytes", "dense weights"), ("bytes_on_disk", "on disk")):
        print(f"{label:18} {format_bytes(info[key])}")
    for key, label in (("expert_bytes", "one expert"), ("all_experts_bytes", "all experts")):
        print(f"{label:18} " + "  ".join(f"{p}={format_bytes(n)}" for p, n in info[key].items()))
    return 0


def model_info(model_dir: Path) -> dict[str, Any]:
    """Identity of the checkpoint in `model_dir`, the bytes of its dense weights as an executor with the
    default dense precision holds them, and the bytes of its experts in every precision."""
    from moeqos.executor.adapters import adapter_for
    from moeqos.executor.checkpoint import Checkpoint
    from moeqos.executor.config import DEFAULT_DENSE_PRECISION
    from moeqos.executor.identity import checkpoint_dense_bytes

    checkpoint = Checkpoint(model_dir)
    config = checkpoint.config_dict
    adapter = adapter_for(str(config.get("model_type")))
    hidden, intermediate = int(config["hidden_size"]), int(config["intermediate_size"])
    experts = int(config["num_local_experts"])
    count = int(config["num_hidden_layers"]) * experts
    per_expert = {str(p): expert_bytes(hidden, intermediate, p, DEFAULT_GROUP_SIZE) for p in Precision}
    return {
        "model_dir": str(model_dir),
        "name": model_dir.name,
        "fingerprint": checkpoint.fingerprint(),
        "num_layers": int(config["num_hidden_layers"]),
        "num_experts": experts,
        "top_k": int(config["num_experts_per_tok"]),
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "vocab_size": int(config["vocab_size"]),
        "dense_precision": str(DEFAULT_DENSE_PRECISION),
        "dense_bytes": checkpoint_dense_bytes(checkpoint, adapter, DEFAULT_DENSE_PRECISION),
        "bytes_on_disk": _disk_bytes(model_dir),
        "group_size": DEFAULT_GROUP_SIZE,
        "expert_bytes": per_expert,
        "all_experts_bytes": {p: n * count for p, n in per_expert.items()},
    }


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
