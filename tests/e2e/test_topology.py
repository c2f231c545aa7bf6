"""The compose file read as a topology, and its translation into local processes (no processes here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from moeqos.demo.run import HOME_VOLUME, REPO_ROOT, load_local, local_services
from moeqos.demo.topology import load_topology, localize

COMPOSE = REPO_ROOT / "docker-compose.yml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "compose.yml"
    path.write_text(text)
    return path


def test_real_compose_has_a_planner_two_executors_a_gateway_and_a_model_job() -> None:
    topology = load_topology(COMPOSE)
    names = [s.name for s in topology.services]
    assert topology.jobs() == {"model"}
    assert {s.name for s in topology.servers()} == {"planner", "executor-a", "executor-b", "gateway"}
    assert names.index("gateway") > max(names.index("executor-a"), names.index("executor-b"))
    assert names.index("model") < names.index("executor-a") and names.index("model") < names.index(
        "executor-b"
    )
    assert len({s.port for s in topology.servers()}) == 4, (
        "each server needs its own port to run side by side"
    )


def test_localize_binds_loopback_and_points_peers_and_volumes_at_local_ones(tmp_path: Path) -> None:
    topology = load_topology(COMPOSE)
    ports = {"planner": 41001, "executor-a": 41002, "executor-b": 41003, "gateway": 41004}
    services = {s.name: s for s in localize(topology, ports, {HOME_VOLUME: tmp_path / "home"})}
    assert services["executor-a"].environment["MOEQOS_LISTEN"] == "127.0.0.1:41002"
    assert services["executor-b"].environment["MOEQOS_LISTEN"] == "127.0.0.1:41003"
    assert services["planner"].environment["MOEQOS_ADVERTISE_ADDRESS"] == "127.0.0.1:41001"
    assert services["executor-a"].healthcheck == ("moeqos", "health", "127.0.0.1:41002")
    assert services["model"].environment["MOEQOS_HOME"] == str(tmp_path / "home")
    assert services["model"].is_job and services["model"].address is None
    assert services["planner"].address == "127.0.0.1:41001"
    gateway = services["gateway"]
    assert gateway.environment["MOEQOS_LISTEN"] == "127.0.0.1:41004"
    assert gateway.environment["MOEQOS_GATEWAY_ROUTES"] == (
        "smollm2-moe8:fast=127.0.0.1:41002;smollm2-moe8:quality=127.0.0.1:41003"
    )
    assert gateway.healthcheck == ("moeqos", "health", "http://127.0.0.1:41004/health")
    assert gateway.wait_for_healthy == ("executor-a", "executor-b")
    for service in services.values():
        text = " ".join([*service.argv, *service.environment.values(), *service.healthcheck])
        assert "0.0.0.0" not in text and "/data/moeqos" not in text


def test_rewrites_name_other_services_and_leave_lookalikes_alone(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        """
services:
  api:
    command: ["moeqos", "planner", "--peer", "worker:7000,worker:70001"]
    environment: ["MOEQOS_LISTEN=0.0.0.0:6000", "OTHER=myworker:7000", "DATA=/data/x/y", "NOT=/data/xy"]
    volumes: ["cache:/data/x", "./local:/src"]
    depends_on: [worker]
  worker:
    command: ["moeqos", "executor"]
    environment: {MOEQOS_LISTEN: "0.0.0.0:7000"}
""",
    )
    services = {
        s.name: s for s in localize(load_topology(compose), {"api": 1, "worker": 2}, {"cache": Path("/c")})
    }
    api = services["api"]
    assert api.argv[-1] == "127.0.0.1:2,worker:70001"
    assert api.environment == {
        "MOEQOS_LISTEN": "127.0.0.1:1",
        "OTHER": "myworker:7000",
        "DATA": "/c/y",
        "NOT": "/data/xy",
    }
    assert [s.name for s in load_topology(compose).services] == ["worker", "api"]


def test_env_overrides_are_laid_over_every_service(tmp_path: Path) -> None:
    services = local_services(load_topology(COMPOSE), tmp_path, {"MOEQOS_MODEL": "/m"})
    assert all(s.environment["MOEQOS_MODEL"] == "/m" for s in services)
    ports = [s.address for s in services if s.address]
    assert len(set(ports)) == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services:\n  a: {command: moeqos planner}\n", "exec form"),
        ("services:\n  a: {command: [x], depends_on: [b]}\n  b: {command: [y], depends_on: [a]}\n", "cycle"),
        ("services:\n  a: {command: [x], depends_on: [nope]}\n", "unknown service"),
    ],
)
def test_bad_compose_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_topology(write(tmp_path, text))


def test_another_model_gets_a_cache_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOEQOS_HOME", str(tmp_path / "home"))
    default = {s.name: s for s in load_local(None)}
    other = {s.name: s for s in load_local(None, tmp_path / "m")}
    assert default["executor-a"].environment["MOEQOS_PROFILE_PATH"] == str(
        tmp_path / "home" / "executor-a.profile.json"
    )
    assert "MOEQOS_MODEL" not in default["executor-a"].environment
    profile = Path(other["executor-a"].environment["MOEQOS_PROFILE_PATH"])
    assert profile.parent.parent == tmp_path / "home" / "demo-models" and profile.parent.name.startswith("m-")
    assert profile.parent.is_dir()
    assert other["executor-b"].environment["MOEQOS_MODEL"] == str(tmp_path / "m")
