"""The benchmark driver: run the chosen sections in order on one model, print, save JSON and plots.

Sections share one `BenchContext` (one executor load, one profile, one frontier), so later sections
compare against what earlier ones measured in the same run. A section that fails is reported as
failed and the rest still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moeqos.bench.report import SectionResult, write_json
from moeqos.bench.settings import ALL_SECTIONS, FULL, QUICK, Settings, parse_sections

DEFAULT_OUT = Path("out/bench")

OVERRIDES = {
    "decode_tokens": "tokens generated per decode-speed run",
    "eval_tokens": "ptb:test tokens per held-out perplexity",
    "repeats": "timed runs per measurement (the median is reported)",
    "measured_plans": "held-out frontier plans to measure",
    "peer_threads": "threads of both systems in the peers section (default 2)",
}
"""Settings a flag may override (moeqos.bench.settings.Settings field -> help)."""

_MODULES = {name: f"moeqos.bench.{name}" for name in ALL_SECTIONS} | {
    "planner": "moeqos.bench.planner_section"
}
"""Section -> the module whose `run(ctx)` measures it (bench.NAME, but for `planner`)."""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags shared by `python -m moeqos.bench` and `moeqos bench`."""
    parser.add_argument(
        "--model", type=Path, default=None, help="checkpoint directory (default: the default model)"
    )
    parser.add_argument("--quick", action="store_true", help="bounded smoke run: few tokens, plans, repeats")
    parser.add_argument(
        "--only",
        default=None,
        type=_sections,
        help=f"comma-separated sections: {','.join(ALL_SECTIONS)} (contention, peers and singles only when named)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results.json and PNG plots go here")
    parser.add_argument("--json", action="store_true", help="print the results JSON instead of tables")
    parser.add_argument(
        "--profile",
        type=_saved_profile,
        default=None,
        help="a saved profile JSON (an executor's, e.g. $MOEQOS_HOME/executor-a.profile.json) instead of "
        "measuring one; it must be of this model and device",
    )
    for name, help_text in OVERRIDES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=_positive, default=None, help=help_text)
    return parser


def _saved_profile(text: str) -> Path:
    """A `--profile` path, refused at once (not after the model loaded) unless it holds a profile of the
    version this build reads."""
    import json

    from moeqos.core.profile import PROFILE_VERSION

    path = Path(text)
    try:
        version = int(json.loads(path.read_text()).get("version", PROFILE_VERSION))
    except (OSError, ValueError, AttributeError) as exc:
        raise argparse.ArgumentTypeError(f"{path}: not a readable profile JSON ({exc})") from None
    if version != PROFILE_VERSION:
        raise argparse.ArgumentTypeError(
            f"{path}: a profile of version {version}, this build reads version {PROFILE_VERSION}; measure it "
            "again (a run without --profile saves the one the contention section used as "
            "OUT/contention/profile.json)"
        )
    return path


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def settings_for(args: argparse.Namespace) -> Settings:
    """The full or quick settings with any per-flag overrides applied."""
    base = QUICK if args.quick else FULL
    return replace(base, **{k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None})


def _sections(text: str) -> str:
    try:
        parse_sections(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def command_line(program: str, args: argparse.Namespace) -> str:
    """The command that reproduces this run, for table headers and the JSON."""
    words = [*program.split(), *(["--model", str(args.model)] if args.model else [])]
    words += [*(["--quick"] if args.quick else []), *(["--only", args.only] if args.only else [])]
    words += [
        f"--{k.replace('_', '-')}={getattr(args, k)}" for k in OVERRIDES if getattr(args, k, None) is not None
    ]
    words += ["--profile", str(args.profile)] if getattr(args, "profile", None) else []
    return shlex.join([*words, "--out", str(args.out), *(["--json"] if args.json else [])])


def run(args: argparse.Namespace, program: str) -> int:
    """Run the benchmark described by parsed `args` (`program` names the entry point); returns the
    exit status."""
    from moeqos.bench.context import BenchContext

    command = command_line(program, args)
    sections = parse_sections(args.only)
    settings = settings_for(args)
    started, clock = datetime.now(UTC), time.perf_counter()
    context = BenchContext.create(args.model, settings, Path(args.out), command, args.profile)
    results = []
    for name in sections:
        results.append(_run_section(name, context))
        if not args.json:  # tables as each section finishes: a full run takes minutes
            print(results[-1].render(context.header()) + "\n", flush=True)
    document = {
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - clock,
        "machine": context.machine_dict(),
        "model": context.model_summary(),
        "settings": settings.to_dict(),
        "sections": {r.name: r.to_dict() for r in results},
    }
    path = write_json(Path(args.out) / "results.json", document)
    print(path.read_text() if args.json else f"results: {path}", end="" if args.json else "\n")
    return 1 if any(r.error for r in results) else 0


def _run_section(name: str, context: Any) -> SectionResult:
    """Run one section, timing it; an exception becomes the section's error, not the run's end."""
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        result: SectionResult = importlib.import_module(_MODULES[name]).run(context)
    except Exception as exc:  # a broken section must not hide the others' numbers
        traceback.print_exc(file=sys.stderr)
        result = SectionResult(name, error=f"{type(exc).__name__}: {exc}")
    result.seconds = time.perf_counter() - start
    print(f"[bench] {name} done in {result.seconds:.1f} s", file=sys.stderr, flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m moeqos.bench` entry point."""
    parser = add_arguments(argparse.ArgumentParser(prog="python -m moeqos.bench", description=__doc__))
    return run(parser.parse_args(argv), "python -m moeqos.bench")
