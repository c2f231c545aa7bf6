"""How every `moeqos` command ends: one exit-code convention, and errors as one message, not a traceback.

`main` runs every command through `run_command`, so the commands just raise: moeqos.core.errors types,
ValueError for a malformed value, OSError for a file or a port. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from moeqos.core.errors import InfeasibleTarget, InvalidArgument, MoeqosError

EXIT_OK = 0
EXIT_FAILED = 1
"""A service or runtime failure: a server unreachable or refusing the call, a busy port, a failed switch."""
EXIT_USAGE = 2
"""Bad usage or input: an unknown flag, a malformed value, a missing or unreadable input file (argparse
exits 2 for its own errors too)."""
EXIT_INFEASIBLE = 3
"""No plan meets the QoS target; the closest feasible point is printed."""
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}    success
  {EXIT_FAILED}    service or runtime error (server unreachable or refusing, port in use, switch failed)
  {EXIT_USAGE}    usage or input error (bad flag or value, missing or unreadable file)
  {EXIT_INFEASIBLE}    no plan meets the QoS target (the closest feasible one is printed)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
With --json, errors are printed to stdout as {{"error": ..., "type": ..., "exit_code": ...}}."""

_INPUT_FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
"""OSErrors that mean a path the user gave is wrong (other OSErrors, e.g. a busy port, are runtime)."""


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of an error the user can act on, or None for an unexpected one (a bug)."""
    if isinstance(exc, InfeasibleTarget):
        return EXIT_INFEASIBLE
    if isinstance(exc, (ValueError, *_INPUT_FILE_ERRORS)):  # InvalidArgument is a ValueError
        return EXIT_USAGE
    if isinstance(exc, (MoeqosError, OSError)):
        return EXIT_FAILED
    return None


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run one command; report an expected error as a message (JSON on stdout with `--json`)."""
    as_json = bool(getattr(args, "json", False))
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None:
            raise
        report(exc, code, as_json)
        return code


def report(exc: BaseException, code: int, as_json: bool) -> None:
    """Print `exc` for a person (stderr) or a program (one JSON object on stdout)."""
    closest: dict[str, Any] = exc.closest if isinstance(exc, InfeasibleTarget) else {}
    message = _message(exc)
    if as_json:
        doc = {"error": message, "type": type(exc).__name__, "exit_code": code}
        print(json.dumps({**doc, **({"closest": closest} if closest else {})}, default=str))
        return
    print(f"error: {message}", file=sys.stderr)
    if closest:
        print(
            f"closest feasible: {closest.get('predicted_tokens_per_s', 0):.3f} tokens/s, perplexity "
            f"{closest.get('predicted_perplexity', 0):.4f}, plan {closest.get('plan_spec')}",
            file=sys.stderr,
        )


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc)
    if isinstance(exc, MoeqosError) and not isinstance(exc, (InvalidArgument, InfeasibleTarget)):
        return f"{type(exc).__name__}: {text}"  # e.g. "Unavailable: ..." for a server that is down
    return text
