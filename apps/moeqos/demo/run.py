"""Start the services of docker-compose.yml as local processes, and stop them again.

services = load_local(None)                        # the checkout's compose file, free ports
with started_services(services, log_dir, print) as running:   # jobs run, servers SERVING
    planner = running.address("planner")
# left: SIGTERM, the grace period, SIGKILL (also on an exception, Ctrl-C or SIGTERM to us)
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from moeqos.demo.processes import HealthProbe, ProcessGroup, Running, grpc_health, http_health
from moeqos.demo.topology import LocalService, Topology, load_topology, localize
from moeqos.executor.default_model.location import moeqos_home

REPO_ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = "docker-compose.yml"
HOME_VOLUME = "moeqos-home"
MODEL_VAR = "MOEQOS_MODEL"
"""The executors' model directory; set it to serve another checkpoint (the model job is then skipped)."""

Say = Callable[[str], None]


def find_compose_file(explicit: Path | None = None) -> Path:
    """The compose file named, else the checkout's, else the one in the working directory."""
    for candidate in (explicit, REPO_ROOT / COMPOSE_FILE, Path.cwd() / COMPOSE_FILE):
        if candidate is not None and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(f"no {COMPOSE_FILE} (give --compose PATH)")


def free_ports(count: int) -> list[int]:
    """Ports free on the loopback right now (held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def local_services(
    topology: Topology, home: Path, env: Mapping[str, str] | None = None
) -> tuple[LocalService, ...]:
    """The topology's services as local processes on free ports, the cache volume at `home` (created,
    as compose creates a volume)."""
    Path(home).mkdir(parents=True, exist_ok=True)
    servers = topology.servers()
    ports = dict(zip((s.name for s in servers), free_ports(len(servers)), strict=True))
    return localize(topology, ports, {HOME_VOLUME: home}, env)


@dataclass
class StartedServices:
    """The local services that are up, by name."""

    group: ProcessGroup
    services: dict[str, Running]
    exit_codes: dict[str, int] = field(default_factory=dict)
    """Exit code by name, filled in once the servers have been stopped."""

    def address(self, name: str) -> str:
        address = self.services[name].service.address
        if address is None:
            raise KeyError(f"{name} is not a server")
        return address

    def names_running(self, command: str) -> list[str]:
        """Servers whose command includes COMMAND (`moeqos executor`: `executor`), in compose order."""
        return [n for n, r in self.services.items() if command in r.service.argv and r.service.address]


@contextlib.contextmanager
def started_services(
    services: tuple[LocalService, ...],
    log_dir: Path,
    say: Say,
    *,
    skip_jobs: bool = False,
    timeout: float = 900.0,
    probe: HealthProbe = grpc_health,
    grace_seconds: float = 20.0,
) -> Iterator[StartedServices]:
    """Run the jobs, start the servers in dependency order and wait until all are SERVING; stop them all
    on leaving (SIGTERM, then SIGKILL after `grace_seconds`), also on Ctrl-C or SIGTERM to us."""
    group = ProcessGroup(log_dir, grace_seconds, cwd=REPO_ROOT)
    handle = StartedServices(group, {})
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _start_all(services, group, handle.services, say, skip_jobs, timeout, probe)
        yield handle
    finally:
        _stop_all(handle, say)
        signal.signal(signal.SIGTERM, previous)


def _start_all(
    services: tuple[LocalService, ...],
    group: ProcessGroup,
    started: dict[str, Running],
    say: Say,
    skip_jobs: bool,
    timeout: float,
    probe: HealthProbe,
) -> None:
    """Run the jobs to completion and start the servers, in order; return once every server is SERVING."""
    for service in services:
        if service.is_job and skip_jobs:
            continue
        where = f" on {service.address}" if service.address else ""
        say(f"{'running' if service.is_job else 'starting'} {service.name}: {' '.join(service.argv)}{where}")
        if service.is_job:
            group.run_job(service, timeout)
            continue
        for dependency in service.wait_for_healthy:
            _wait(group, started, dependency, probe, timeout, say)
        started[service.name] = group.start(service)
    for name in started:
        _wait(group, started, name, probe, timeout, say)


def _stop_all(handle: StartedServices, say: Say) -> None:
    """Stop whatever runs; a second Ctrl-C meanwhile is ignored, so no child is left behind (the stop is
    bounded: SIGKILL follows SIGTERM after the grace period)."""
    if not handle.group.running:
        return
    say(f"stopping the services (SIGTERM; SIGKILL after {handle.group.grace_seconds:.0f}s)")
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        codes = handle.group.stop()
    finally:
        signal.signal(signal.SIGINT, interrupt)
    handle.exit_codes = {name: code for name, code in codes.items() if name in handle.services}
    say("stopped: " + ", ".join(f"{name} exit {code}" for name, code in handle.exit_codes.items()))


def _wait(
    group: ProcessGroup, started: dict[str, Running], name: str, probe: HealthProbe, timeout: float, say: Say
) -> None:
    """Wait for one started server to be SERVING (once: later waits return at once)."""
    running = started[name]
    if running.healthy:
        return
    took = group.wait_healthy(running, probe_for(running.service, probe), timeout)
    running.healthy = True
    say(f"{name} is SERVING (waited {took:.1f}s)")


def probe_for(service: LocalService, probe: HealthProbe) -> HealthProbe:
    """The service's own HTTP health URL when its health check names one (the gateway), else `probe`."""
    url = next((part for part in service.healthcheck if part.startswith(("http://", "https://"))), None)
    if url is None:
        return probe
    return lambda _address: http_health(url)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class Clock:
    """Stage lines with the seconds since the demo started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", flush=True)


def load_local(compose: Path | None, model: Path | None = None) -> tuple[LocalService, ...]:
    """The services of the compose file as local processes. The cache volume is this user's MOEQOS_HOME;
    with another `model`, the executors serve it and the volume is a directory of its own under
    MOEQOS_HOME, so the profiles they keep there never overwrite the default model's."""
    if model is None:
        return local_services(load_topology(find_compose_file(compose)), moeqos_home())
    model = Path(model).resolve()
    digest = hashlib.sha256(str(model).encode()).hexdigest()[:10]
    home = moeqos_home() / "demo-models" / f"{model.name}-{digest}"
    return local_services(load_topology(find_compose_file(compose)), home, {MODEL_VAR: str(model)})
