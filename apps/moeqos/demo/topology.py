"""The deployment topology, read from docker-compose.yml, and its translation into local processes.

The compose file is the one description of the services: their commands, environment, ports,
dependencies and health checks. `moeqos demo` and the end-to-end tests start the same services as local
processes by translating it (`localize`), so the containers and the processes cannot drift apart:

- a service's gRPC port is the port of its `MOEQOS_LISTEN` (`0.0.0.0:50061` inside its container);
- every `0.0.0.0:P`, `127.0.0.1:P`, `localhost:P` and `SERVICE:P` naming a service's port becomes
  `127.0.0.1:LOCAL` (locally a service binds loopback only, and each gets a port of its own);
- a named volume's mount point (e.g. `/data/moeqos`) becomes a local directory;
- a service that others wait for with `service_completed_successfully` is a one-shot job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LISTEN_VAR = "MOEQOS_LISTEN"
COMPLETED = "service_completed_successfully"
HEALTHY = "service_healthy"


@dataclass(frozen=True)
class ServiceSpec:
    """One compose service, as the compose file gives it."""

    name: str
    command: tuple[str, ...]
    """The argv (exec form); the image's entry point is not used."""
    environment: dict[str, str]
    port: int | None
    """The gRPC port it listens on (from MOEQOS_LISTEN); None for a job."""
    depends_on: dict[str, str] = field(default_factory=dict)
    """Service name -> compose condition (`service_healthy`, `service_completed_successfully`, ...)."""
    healthcheck: tuple[str, ...] = ()
    """The health probe's argv (without compose's leading `CMD`)."""
    volumes: dict[str, str] = field(default_factory=dict)
    """Named volume -> mount point inside the container."""


@dataclass(frozen=True)
class Topology:
    """The services of a compose file, in an order that respects their dependencies."""

    services: tuple[ServiceSpec, ...]

    def __getitem__(self, name: str) -> ServiceSpec:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def jobs(self) -> frozenset[str]:
        """Services that others wait to complete (run to completion, not kept running)."""
        return frozenset(
            dep for s in self.services for dep, cond in s.depends_on.items() if cond == COMPLETED
        )

    def servers(self) -> tuple[ServiceSpec, ...]:
        """Long-running services with a gRPC port."""
        return tuple(s for s in self.services if s.name not in self.jobs() and s.port is not None)


@dataclass(frozen=True)
class LocalService:
    """A service translated to a local process."""

    name: str
    argv: tuple[str, ...]
    environment: dict[str, str]
    address: str | None
    """`127.0.0.1:PORT` of a server; None for a job."""
    healthcheck: tuple[str, ...]
    is_job: bool
    wait_for_healthy: tuple[str, ...] = ()
    """Servers that must be SERVING before this one starts (compose's `service_healthy`)."""


def load_topology(path: Path) -> Topology:
    """Parse a compose file into a Topology (services sorted so dependencies come first)."""
    import yaml  # PyYAML; imported here so the rest of the CLI needs none

    data = yaml.safe_load(Path(path).read_text())
    services = [_service(name, body or {}) for name, body in (data.get("services") or {}).items()]
    return Topology(_dependency_order(services))


def _service(name: str, body: Mapping[str, Any]) -> ServiceSpec:
    command = body.get("command")
    if not isinstance(command, list) or not command:
        raise ValueError(f"service {name}: give `command` in exec form (a list)")
    environment = _environment(body.get("environment") or {})
    listen = environment.get(LISTEN_VAR)
    depends = body.get("depends_on") or {}
    if isinstance(depends, list):
        depends = {dep: {"condition": "service_started"} for dep in depends}
    test = list((body.get("healthcheck") or {}).get("test") or [])
    return ServiceSpec(
        name=name,
        command=tuple(str(part) for part in command),
        environment=environment,
        port=int(listen.rpartition(":")[2]) if listen else None,
        depends_on={
            dep: str((cond or {}).get("condition", "service_started")) for dep, cond in depends.items()
        },
        healthcheck=tuple(str(part) for part in test[1:]) if test[:1] == ["CMD"] else (),
        volumes=_named_volumes(body.get("volumes") or []),
    )


def _environment(raw: Mapping[str, Any] | list[str]) -> dict[str, str]:
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def _named_volumes(raw: list[Any]) -> dict[str, str]:
    """Named volumes (not bind mounts) of a service: volume -> mount point."""
    mounts: dict[str, str] = {}
    for entry in raw:
        source, target = (
            entry.split(":")[:2] if isinstance(entry, str) else (entry["source"], entry["target"])
        )
        if not source.startswith((".", "/", "~", "$")):
            mounts[source] = target
    return mounts


def _dependency_order(services: list[ServiceSpec]) -> tuple[ServiceSpec, ...]:
    """Services sorted so each comes after what it depends on (stable otherwise)."""
    by_name = {s.name: s for s in services}
    ordered: list[ServiceSpec] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ValueError(f"dependency cycle: {' -> '.join((*path, name))}")
        if name not in by_name:
            raise ValueError(f"{path[-1]} depends on unknown service {name}")
        if by_name[name] in ordered:
            return
        for dep in by_name[name].depends_on:
            visit(dep, (*path, name))
        ordered.append(by_name[name])

    for service in services:
        visit(service.name, ())
    return tuple(ordered)


def localize(
    topology: Topology,
    ports: Mapping[str, int],
    volumes: Mapping[str, Path],
    env: Mapping[str, str] | None = None,
) -> tuple[LocalService, ...]:
    """The services as local processes: servers on `127.0.0.1:ports[name]`, volumes at local paths, and
    `env` laid over every service's environment (e.g. to point the executors at another model)."""
    mounts = {target: str(volumes[name]) for s in topology.services for name, target in s.volumes.items()}
    jobs = topology.jobs()

    def local(s: ServiceSpec) -> LocalService:
        pattern, table = _address_rewrites(topology, ports, s)

        def translate(text: str) -> str:
            text = pattern.sub(lambda m: table[m.group(0)], text)
            for target, path in mounts.items():
                text = re.sub(rf"(?<![\w/]){re.escape(target)}(?=/|$|[,:;\s])", path, text)
            return text

        return LocalService(
            name=s.name,
            argv=tuple(translate(part) for part in s.command),
            environment={**{k: translate(v) for k, v in s.environment.items()}, **(env or {})},
            address=f"127.0.0.1:{ports[s.name]}" if s in topology.servers() else None,
            healthcheck=tuple(translate(part) for part in s.healthcheck),
            is_job=s.name in jobs,
            wait_for_healthy=tuple(dep for dep, cond in s.depends_on.items() if cond == HEALTHY),
        )

    return tuple(local(s) for s in topology.services)


def _address_rewrites(
    topology: Topology, ports: Mapping[str, int], own: ServiceSpec
) -> tuple[re.Pattern[str], dict[str, str]]:
    """A pattern matching the in-container addresses that `own` may use, and their local replacements:
    `SERVICE:PORT` of every server, and its own port on 0.0.0.0, 127.0.0.1 and localhost."""
    table = {f"{s.name}:{s.port}": f"127.0.0.1:{ports[s.name]}" for s in topology.servers()}
    if own in topology.servers():
        for host in ("0.0.0.0", "127.0.0.1", "localhost"):
            table[f"{host}:{own.port}"] = f"127.0.0.1:{ports[own.name]}"
    if not table:
        return re.compile(r"(?!)"), table  # matches nothing
    alternatives = "|".join(re.escape(a) for a in sorted(table, key=len, reverse=True))
    return re.compile(rf"(?<![\w.-])(?:{alternatives})(?!\d)"), table
