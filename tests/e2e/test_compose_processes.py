"""The services of docker-compose.yml started as real processes from the file's own commands and
environment (as `moeqos demo` does), on a tiny random Mixtral: health, Deploy, Generate, a chat through
the gateway with the openai client, clean SIGTERM."""

from __future__ import annotations

import subprocess
from pathlib import Path

import openai
import pytest
from moeqos.client import DeploySpec, ExecutorClient, PlannerClient, Sampling
from moeqos.core.qos import QosTarget
from moeqos.demo.processes import console_argv
from moeqos.demo.run import MODEL_VAR, REPO_ROOT, local_services, started_services
from moeqos.demo.topology import load_topology

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from moeqos.executor.testing import make_tiny_mixtral

    return make_tiny_mixtral(tmp_path_factory.mktemp("tiny") / "model")


def test_compose_services_as_processes_deploy_generate_and_stop_cleanly(
    tmp_path: Path, tiny_model: Path
) -> None:
    topology = load_topology(REPO_ROOT / "docker-compose.yml")
    services = local_services(topology, tmp_path / "home", {MODEL_VAR: str(tiny_model)})
    lines: list[str] = []
    with started_services(services, tmp_path / "logs", lines.append, skip_jobs=True, timeout=180) as running:
        executor = running.address("executor-a")
        probe = running.services["executor-a"].service.healthcheck
        assert subprocess.run(console_argv(probe), capture_output=True, timeout=60).returncode == 0

        with PlannerClient(running.address("planner")) as planner:
            target = QosTarget(max_perplexity_increase=1e6)
            (outcome,) = planner.deploy([DeploySpec(executor, target)], timeout=300)
        assert outcome.executor_address == executor
        assert (outcome.plan.num_layers, outcome.plan.num_experts) == (2, 4)
        assert outcome.prediction.tokens_per_s > 0

        with ExecutorClient(executor) as client:
            events = list(client.generate("hello world", Sampling(max_tokens=6), timeout=120))
            info = client.info()
        stats = events[-1].stats
        assert stats is not None and 1 <= stats.generated_tokens <= 6
        assert stats.plan_spec == outcome.plan.to_spec()
        assert info.standing_target == target and info.plan == outcome.plan

        gateway = running.services["gateway"].service
        assert (
            subprocess.run(console_argv(gateway.healthcheck), capture_output=True, timeout=60).returncode == 0
        )
        client = openai.OpenAI(base_url=f"http://{gateway.address}/v1", api_key="-", max_retries=0)
        chat = client.chat.completions.create(
            model="smollm2-moe8:fast", messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )
        assert chat.usage is not None and 1 <= chat.usage.completion_tokens <= 4
    assert running.exit_codes == {"executor-a": 0, "executor-b": 0, "planner": 0, "gateway": 0}, lines
    assert not (tmp_path / "logs" / "model.log").exists(), "a model override skips the model job"
    assert (tmp_path / "home" / "executor-a.profile.json").is_file(), "profiles are kept in the volume"
