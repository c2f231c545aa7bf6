"""Entry point of the `moeqos` console script."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib import metadata

from moeqos.cli.guard import EXIT_CODES_HELP, EXIT_USAGE, run_command

# Modules that each define `register(subparsers)`; their commands set `func` on the parsed namespace.
COMMAND_MODULES = (
    "moeqos.cli.model_cmds",  # model prepare
    "moeqos.cli.eval_cmds",  # eval
    "moeqos.cli.planner_cmds",  # plan, frontier, whatif
    "moeqos.cli.serve_cmds",  # planner, executor (serve)
    "moeqos.cli.gateway_cmds",  # gateway (the OpenAI-compatible HTTP service)
    "moeqos.cli.client_cmds",  # generate, deploy, status
    "moeqos.cli.demo_cmds",  # demo
    "moeqos.cli.bench_cmds",  # bench
)

FLOORS = ("moeqos.planner", "moeqos.executor", "moeqos.gateway")
"""Packages an image may leave out (the planner image has no executor, the gateway image neither)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moeqos",
        description="Serve Mixture-of-Experts models with per-expert precision and tier placement.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name and exc.name not in FLOORS:
                raise
            continue  # a command group, or the floor it needs, not in this image (planner, gateway images)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return run_command(args.func, args)


def _version() -> str:
    """The installed distribution's version (pyproject.toml), or a note when running from bare sources."""
    try:
        return metadata.version("moeqos")
    except metadata.PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
