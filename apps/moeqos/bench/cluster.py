"""A planner and executors as real `moeqos` processes on loopback, for the load harness and the fault tests.

Each service is started with `--listen 127.0.0.1:PORT --json` (port 0 on the first start) in its own
process group (moeqos.demo.processes.ProcessGroup), its bound port read from the JSON line it prints,
and can be killed with any signal and restarted on the same port. `close()` stops everything.

    with Cluster(work_dir) as cluster:
        planner = cluster.start("planner", "planner", [])
        executor = cluster.start("ex0", "executor", ["--model", str(model_dir)])
        cluster.kill("ex0", signal.SIGKILL)
        cluster.restart("ex0")
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Self

from moeqos.demo.processes import ProcessGroup, Running, ServiceFailed, console_argv, grpc_health
from moeqos.demo.topology import LocalService

ROOT = Path(__file__).resolve().parents[3]
"""The repository root: the services run from here, so `python -m moeqos.cli.main` imports this tree."""


@dataclass
class Service:
    """One started service: its command, the port it bound, and its process."""

    name: str
    command: str
    """`planner` or `executor`."""
    args: tuple[str, ...]
    port: int
    running: Running

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.running.process.pid

    def alive(self) -> bool:
        return self.running.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return self.running.log_tail(lines)


class Cluster:
    """Services started so far, by name; use as a context manager so every process is stopped."""

    def __init__(
        self,
        work_dir: Path,
        grace_seconds: float = 10.0,
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.work_dir = Path(work_dir)
        self.wrapper = tuple(wrapper)
        """A command the services run under (e.g. `prlimit --as=BYTES`), or none."""
        self.group = ProcessGroup(self.work_dir / "logs", grace_seconds=grace_seconds, cwd=ROOT)
        self.env = {"PYTHONPATH": str(ROOT), **(env or {})}
        self.services: dict[str, Service] = {}

    def start(
        self,
        name: str,
        command: str,
        args: Sequence[str],
        port: int = 0,
        wait: bool = True,
        timeout: float = 300.0,
    ) -> Service:
        """Start `moeqos COMMAND ARGS` on 127.0.0.1:PORT; with `wait`, return once it is SERVING."""
        running = self._launch(name, command, args, port)
        service = self._bound(running, command, args, timeout)
        if wait:
            self.wait_serving(name, timeout)
        return service

    def start_many(
        self, specs: Sequence[tuple[str, str, Sequence[str]]], timeout: float = 300.0
    ) -> list[Service]:
        """Start several `(name, command, args)` services at once on free ports; return once all are SERVING."""
        launched = [(self._launch(name, command, args, 0), command, args) for name, command, args in specs]
        services = [self._bound(running, command, args, timeout) for running, command, args in launched]
        for service in services:
            self.wait_serving(service.name, timeout)
        return services

    def _launch(self, name: str, command: str, args: Sequence[str], port: int) -> Running:
        argv = (*console_argv(["moeqos"]), command, "--listen", f"127.0.0.1:{port}", "--json", *args)
        argv = (*self.wrapper, *argv)
        return self.group.start(LocalService(name, argv, self.env, None, (), False))

    def _bound(self, running: Running, command: str, args: Sequence[str], timeout: float) -> Service:
        bound = _bound_port(running, timeout)
        running.service = replace(running.service, address=f"127.0.0.1:{bound}")
        service = Service(running.service.name, command, tuple(args), bound, running)
        self.services[service.name] = service
        return service

    def wait_serving(self, name: str, timeout: float = 300.0) -> float:
        """Seconds until the service's health is SERVING; ServiceFailed if it exits or times out first."""
        return self.group.wait_healthy(self.services[name].running, grpc_health, timeout, poll=0.2)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL, timeout: float = 60.0) -> int:
        """Send `sig` to the service's process group and wait for it to exit; its exit code."""
        process = self.services[name].running.process
        os.killpg(process.pid, sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise ServiceFailed(f"{name} did not exit within {timeout:.0f}s of {sig.name}") from None

    def restart(self, name: str, wait: bool = True, timeout: float = 300.0) -> Service:
        """Start a stopped service again with the same arguments on the same port."""
        old = self.services[name]
        if old.alive():
            raise ValueError(f"{name} is still running (pid {old.pid})")
        return self.start(name, old.command, old.args, old.port, wait, timeout)

    def close(self) -> dict[str, int]:
        """SIGTERM every live service, SIGKILL after the grace period; exit codes by name."""
        return self.group.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _bound_port(running: Running, timeout: float) -> int:
    """The port from the service's `{"port": N}` line, which it prints as soon as it is bound."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running.log.flush()
        for line in running.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"port"' in line:
                return int(json.loads(line)["port"])
        if running.process.poll() is not None:
            raise ServiceFailed(
                f"{running.service.name} exited with {running.process.returncode} before binding:\n"
                f"{running.log_tail()}"
            )
        time.sleep(0.1)
    raise ServiceFailed(f"{running.service.name} printed no port within {timeout:.0f}s")
