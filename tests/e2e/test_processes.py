"""ProcessGroup with real child processes: jobs, health waits, SIGTERM then SIGKILL."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from moeqos.demo.processes import ProcessGroup, ServiceFailed, console_argv
from moeqos.demo.topology import LocalService

pytestmark = pytest.mark.e2e


def service(name: str, code: str, address: str | None = "127.0.0.1:1") -> LocalService:
    return LocalService(name, (sys.executable, "-c", code), {"DEMO_NAME": name}, address, (), address is None)


# Exits 0 on SIGTERM once it has written `ready` (after installing its handler).
POLITE = (
    "import os, signal, sys, time, pathlib\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "pathlib.Path(os.environ['READY']).write_text('up')\n"
    "time.sleep(60)\n"
)
STUBBORN = POLITE.replace("lambda *a: sys.exit(0)", "signal.SIG_IGN")


def file_probe(path: Path) -> Callable[[str], str]:
    """SERVING once the child has written its ready file."""
    return lambda address: "SERVING" if path.exists() else "NOT_SERVING"


def test_a_job_must_exit_zero(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        group.run_job(service("ok", "print('fine')", None), timeout=30)
        with pytest.raises(ServiceFailed, match=r"bad exited with 3[\s\S]*going down"):
            group.run_job(service("bad", "import sys; print('going down'); sys.exit(3)", None), timeout=30)
    assert (tmp_path / "ok.log").read_text().strip() == "fine"


def test_sigterm_then_sigkill_after_the_grace_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = ProcessGroup(tmp_path, grace_seconds=1.0)
    for name, code in (("polite", POLITE), ("stubborn", STUBBORN)):
        ready = tmp_path / f"{name}.ready"
        monkeypatch.setenv("READY", str(ready))
        running = group.start(service(name, code))
        group.wait_healthy(running, file_probe(ready), timeout=30, poll=0.05)
    start = time.monotonic()
    codes = group.stop()
    assert codes == {"polite": 0, "stubborn": -signal.SIGKILL}
    assert 0.9 < time.monotonic() - start < 10


def test_health_wait_fails_fast_when_the_service_dies(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        running = group.start(service("dies", "import sys; print('no model'); sys.exit(2)"))
        start = time.monotonic()
        with pytest.raises(ServiceFailed, match=r"dies exited with 2 before serving[\s\S]*no model"):
            group.wait_healthy(running, lambda address: "NOT_SERVING", timeout=60, poll=0.05)
        assert time.monotonic() - start < 30


def test_health_wait_times_out(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path, grace_seconds=5) as group:
        running = group.start(service("slow", "import time; time.sleep(60)"))
        with pytest.raises(ServiceFailed, match="not SERVING after"):
            group.wait_healthy(running, lambda address: "NOT_SERVING", timeout=0.3, poll=0.05)
    assert running.process.returncode == -signal.SIGTERM


def test_moeqos_runs_under_this_interpreter() -> None:
    assert console_argv(["moeqos", "health", "x:1"]) == [
        sys.executable,
        "-m",
        "moeqos.cli.main",
        "health",
        "x:1",
    ]
    assert console_argv(["other", "arg"]) == ["other", "arg"]
