"""Local processes for the services of a topology: start, wait for health, stop (SIGTERM, then SIGKILL).

Mechanism only: which services to start and in what order comes from `moeqos.demo.topology`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from moeqos.demo.topology import LocalService

HealthProbe = Callable[[str], str]
"""Address -> health status name (`SERVING`, `NOT_SERVING`, `UNKNOWN`, ...)."""


class ServiceFailed(RuntimeError):
    """A service exited when it should not have, or did not become healthy in time."""


def console_argv(argv: Sequence[str]) -> list[str]:
    """`moeqos ...` run by this interpreter (so a venv's or a checkout's moeqos, whatever PATH says)."""
    if argv and argv[0] == "moeqos":
        return [sys.executable, "-m", "moeqos.cli.main", *argv[1:]]
    return list(argv)


@dataclass
class Running:
    """A started service, its process and its log file."""

    service: LocalService
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes] = field(repr=False)
    healthy: bool = False
    """Seen SERVING at least once."""

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class ProcessGroup:
    """The services started so far; stopping the group stops all of them, last started first.

    Use as a context manager so they stop on any exit, Ctrl-C included.
    """

    def __init__(self, log_dir: Path, grace_seconds: float = 15.0, cwd: Path | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.grace_seconds = grace_seconds
        self.cwd = cwd
        self.running: list[Running] = []

    def start(self, service: LocalService) -> Running:
        """Start one service in its own session (a terminal's Ctrl-C reaches only us), logging to a file."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{service.name}.log"
        log = log_path.open("wb")
        env = {**os.environ, **service.environment, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            console_argv(service.argv),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            start_new_session=True,
        )
        running = Running(service, process, log_path, log)
        self.running.append(running)
        return running

    def run_job(self, service: LocalService, timeout: float) -> None:
        """Run a one-shot service to completion; raise ServiceFailed unless it exits 0 in time."""
        job = self.start(service)
        try:
            code = job.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ServiceFailed(
                f"{service.name} did not finish in {timeout:.0f}s (log: {job.log_path})"
            ) from None
        if code != 0:
            raise ServiceFailed(
                f"{service.name} exited with {code}; its log ({job.log_path}):\n{job.log_tail()}"
            )

    def wait_healthy(self, running: Running, probe: HealthProbe, timeout: float, poll: float = 0.5) -> float:
        """Poll the service's health until SERVING; return the seconds it took. Fails fast if it exits."""
        start = time.monotonic()
        address = running.service.address
        if address is None:
            raise ValueError(f"{running.service.name} has no address to probe")
        while True:
            code = running.process.poll()
            if code is not None:
                raise ServiceFailed(
                    f"{running.service.name} exited with {code} before serving; "
                    f"its log ({running.log_path}):\n"
                    f"{running.log_tail()}"
                )
            if probe(address) == "SERVING":
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise ServiceFailed(
                    f"{running.service.name} not SERVING after {timeout:.0f}s (log: {running.log_path})"
                )
            time.sleep(poll)

    def stop(self) -> dict[str, int]:
        """SIGTERM every live service, wait out the grace period, SIGKILL what is left; exit codes by name."""
        live = [r for r in reversed(self.running) if r.process.poll() is None]
        for r in live:
            _signal(r.process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for r in live:
            try:
                r.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(r.process, signal.SIGKILL)
                r.process.wait()
        codes = {r.service.name: int(r.process.returncode) for r in self.running}
        for r in self.running:
            r.log.close()
        self.running = []
        return codes

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal a service's whole process group (it may have started helpers of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def grpc_health(address: str) -> str:
    """The gRPC health status of the whole server at `address`; `UNAVAILABLE` if it cannot be reached."""
    from moeqos.client.base import SyncBase
    from moeqos.core.errors import MoeqosError

    try:
        with SyncBase(address) as probe:
            return probe.health(timeout=2.0)
    except MoeqosError:
        return "UNAVAILABLE"


def http_health(url: str) -> str:
    """`SERVING` when GET `url` answers 200 (the gateway's `/health`), else why not."""
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=2.0) as reply:
            return "SERVING" if reply.status == 200 else f"NOT_SERVING (HTTP {reply.status})"
    except HTTPError as exc:
        return f"NOT_SERVING (HTTP {exc.code})"
    except (URLError, OSError) as exc:
        return f"UNAVAILABLE ({exc})"
