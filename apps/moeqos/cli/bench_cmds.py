"""`moeqos bench`: the benchmark suite (frontier, baseline, bandwidth, tiers, planner, paper)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `bench` command."""
    parser = subparsers.add_parser(
        "bench",
        help="measure throughput/quality along the planner's frontier and against baselines",
        description="Print benchmark tables, write results.json and PNG plots under --out.",
    )
    from moeqos.bench.runner import add_arguments  # torch-free; the sections import torch when they run

    add_arguments(parser)
    parser.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from moeqos.bench.runner import run

    return run(args, "moeqos bench")
