"""Addresses a caller may make the planner dial (issue 16, case 9): only `host:port` (no unix sockets or
other schemes), only the allow-list when one is configured, only with the token when the planner has
one, and never the planner itself (which used to answer INTERNAL)."""

from __future__ import annotations

import pytest
from moeqos.client import ConnectOptions, PlannerClient
from moeqos.core.errors import InvalidArgument, Unauthenticated
from moeqos.core.qos import Objective, QosTarget

from tests.service.service_harness import address

SPEED = QosTarget(objective=Objective.SPEED)
TOKEN = "s3cret-token"


def test_the_planner_never_dials_itself_or_a_unix_socket(stack, profile_file):
    executor, planner = stack.executor(budgets={"disk": 0}), stack.planner()
    with PlannerClient(address(planner.port)) as client:
        with pytest.raises(InvalidArgument, match="own address"):
            client.plan(SPEED, executor=address(planner.port))
        with pytest.raises(InvalidArgument, match="host:port"):
            client.plan(SPEED, executor="unix:/tmp/moeqos.sock")
        assert client.plan(SPEED, executor=address(executor.port)).plan is not None


def test_naming_an_executor_needs_the_token_when_the_planner_has_one(stack, profile_file):
    executor, planner = stack.executor(budgets={"disk": 0}), stack.planner(token=TOKEN)
    with PlannerClient(address(planner.port)) as anonymous, pytest.raises(Unauthenticated, match="token"):
        anonymous.plan(SPEED, executor=address(executor.port))
    with PlannerClient(address(planner.port), ConnectOptions(token=TOKEN)) as admin:
        assert admin.plan(SPEED, executor=address(executor.port)).plan is not None


def test_only_allowed_executors(stack, profile_file):
    executor = stack.executor(budgets={"disk": 0})
    planner = stack.planner(executor_allow=("127.0.0.1:1",))
    with PlannerClient(address(planner.port)) as client, pytest.raises(InvalidArgument, match="allow-list"):
        client.plan(SPEED, executor=address(executor.port))
