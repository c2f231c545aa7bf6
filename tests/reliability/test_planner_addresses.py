"""Addresses a caller may make the planner dial (issue 16, case 9): only `host:port` (no unix sockets or
other schemes), only the allow-list when one is configured, only with the token when the planner has
one, never the planner itself (which used to answer INTERNAL), and one Deploy never names the same
executor twice under two spellings (it used to give it two plans)."""

from __future__ import annotations

import argparse

import pytest
from moeqos.cli import serve_cmds
from moeqos.client import ConnectOptions, DeploySpec, ExecutorClient, PlannerClient
from moeqos.core.errors import InvalidArgument, Unauthenticated
from moeqos.core.qos import Objective, QosTarget
from moeqos.planner.server import PlannerServerConfig

from tests.service.service_harness import address

SPEED = QosTarget(objective=Objective.SPEED)
TOKEN = "s3cret-token"


def test_the_planner_never_dials_itself_or_a_unix_socket(stack, profile_file):
    executor, planner = stack.executor(tier_budgets={"disk": 0}), stack.planner()
    with PlannerClient(address(planner.port)) as client:
        for spelling in (
            address(planner.port),
            f"[::ffff:127.0.0.1]:{planner.port}",
            f"LOCALHOST:{planner.port}",
        ):
            with pytest.raises(InvalidArgument, match="own address"):
                client.plan(SPEED, executor=spelling)
        with pytest.raises(InvalidArgument, match="host:port"):
            client.plan(SPEED, executor="unix:/tmp/moeqos.sock")
        assert client.plan(SPEED, executor=address(executor.port)).plan is not None


def test_naming_an_executor_needs_the_token_when_the_planner_has_one(stack, profile_file):
    executor, planner = stack.executor(tier_budgets={"disk": 0}), stack.planner(token=TOKEN)
    with PlannerClient(address(planner.port)) as anonymous, pytest.raises(Unauthenticated, match="token"):
        anonymous.plan(SPEED, executor=address(executor.port))
    with PlannerClient(address(planner.port), ConnectOptions(token=TOKEN)) as admin:
        assert admin.plan(SPEED, executor=address(executor.port)).plan is not None


def test_only_allowed_executors(stack, profile_file):
    executor = stack.executor(tier_budgets={"disk": 0})
    planner = stack.planner(executor_allow=("127.0.0.1:1",))
    with PlannerClient(address(planner.port)) as client, pytest.raises(InvalidArgument, match="allow-list"):
        client.plan(SPEED, executor=address(executor.port))


def _planner_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cmds.register(parser.add_subparsers())
    return parser.parse_args(["planner", *argv])


def test_the_allow_list_comes_from_the_flags_then_the_environment():
    def allowed(argv: tuple[str, ...], env: dict[str, str]) -> tuple[str, ...]:
        return PlannerServerConfig.from_env_and_args(_planner_flags(*argv), env=env).executor_allow

    env = {"MOEQOS_EXECUTOR_ALLOW": "10.0.0.1:50061, 10.0.0.2:50061"}
    assert allowed((), {}) == ()
    assert allowed((), env) == ("10.0.0.1:50061", "10.0.0.2:50061")
    assert allowed(("--executor-allow", "a:1", "--executor-allow", "b:2"), env) == ("a:1", "b:2")
    with pytest.raises(ValueError, match="executor allow-list"):  # a typo fails at start, not per call
        allowed(("--executor-allow", "10.0.0.1"), {})


@pytest.mark.parametrize(
    "spelling", ["localhost:{port}", "[::1]:{port}", "127.0.0.1:0{port}", "0.0.0.0:{port}"]
)
def test_a_deploy_naming_one_executor_twice_is_refused_before_anything_applies(stack, profile_file, spelling):
    """Two plans for one executor under two spellings: refused as a whole, the executor untouched."""
    executor, planner = stack.executor(tier_budgets={"disk": 0}), stack.planner()
    one, other = address(executor.port), spelling.format(port=executor.port)
    twice = [DeploySpec(one, SPEED), DeploySpec(other, QosTarget(objective=Objective.QUALITY))]
    with PlannerClient(address(planner.port)) as client, ExecutorClient(one) as direct:
        before = direct.info()
        with pytest.raises(InvalidArgument, match="name the same executor") as refused:
            client.deploy(twice)
        assert one in str(refused.value) and other in str(refused.value)
        after = direct.info()
        assert (after.plan, after.standing_target, after.planner_address) == (
            before.plan,
            before.standing_target,
            before.planner_address,
        )
