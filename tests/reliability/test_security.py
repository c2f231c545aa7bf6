"""Security settings beyond tests/service/test_plumbing: the default bind address, tokens carried on the
planner->executor and executor->planner calls (and never lent to an anonymous caller), TLS and mutual
TLS between the services, and mutual TLS refusing a certificate from another CA."""

from __future__ import annotations

import argparse
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from moeqos.cli import serve_cmds
from moeqos.client import ConnectOptions, DeploySpec, ExecutorClient, PlannerClient, ReplanState
from moeqos.core.errors import Unauthenticated, Unavailable
from moeqos.core.qos import Objective, QosTarget
from moeqos.core.tier import TierStatus
from moeqos.executor.server import ExecutorServerConfig
from moeqos.planner.server import PlannerServerConfig
from moeqos.proto.executor.v1 import executor_pb2_grpc as ex_grpc

from tests.service.service_harness import address
from tests.service.tls_certs import make_certs

QUALITY = QosTarget(objective=Objective.QUALITY)


def _parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cmds.register(parser.add_subparsers())
    return parser.parse_args(list(argv))


def test_both_services_listen_on_loopback_by_default():
    planner = PlannerServerConfig.from_env_and_args(_parsed("planner"), env={})
    executor = ExecutorServerConfig.from_env_and_args(_parsed("executor"), env={})
    assert planner.listen.rpartition(":")[0] == "127.0.0.1"
    assert executor.listen.rpartition(":")[0] == "127.0.0.1"
    widened = PlannerServerConfig.from_env_and_args(_parsed("planner"), env={"MOEQOS_LISTEN": "0.0.0.0:1"})
    assert widened.listen == "0.0.0.0:1"  # only when told


def _outside_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has a non-loopback one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        host = str(probe.getsockname()[0])
    return None if host.startswith("127.") else host


def test_a_server_on_the_default_address_cannot_be_reached_from_outside(stack):
    host = _outside_address()
    if host is None:
        pytest.skip("this machine has no non-loopback address")
    default = PlannerServerConfig.from_env_and_args(_parsed("planner"), env={}).listen
    planner = stack.planner(listen=f"{default.rpartition(':')[0]}:0")
    with PlannerClient(address(planner.port)) as inside:
        assert inside.health() == "SERVING"
    outside = PlannerClient(f"{host}:{planner.port}", ConnectOptions(timeout=5))
    with outside, pytest.raises(Unavailable):
        outside.health()


def test_deploy_carries_the_token_to_executors(stack, profile_file):
    executor = stack.executor(token="shared", tier_budgets={"disk": 0})
    good = stack.planner(token="shared")
    wrong_peer = stack.planner(token="shared", peer_token="not-it")
    admin = ConnectOptions(token="shared")
    with ExecutorClient(address(executor.port)) as reader:
        before = reader.info().plan
        with PlannerClient(address(wrong_peer.port), admin) as planner, pytest.raises(Unauthenticated):
            planner.deploy([DeploySpec(address(executor.port), QUALITY)], timeout=60)
        assert reader.info().plan == before and reader.info().standing_target is None
        with PlannerClient(address(good.port), admin) as planner:
            outcome = planner.deploy([DeploySpec(address(executor.port), QUALITY)], timeout=60)
        assert reader.info().plan == outcome[0].plan and reader.info().standing_target == QUALITY


@pytest.mark.parametrize("peer_token", [None, "not-it"])
def test_replans_carry_the_token_to_the_planner(stack, profile_file, peer_token):
    """The planner requires the token even on reads (auth_read): the executor's re-plan gets through only
    with the right one, and a wrong one ends the re-plan as failed rather than retrying forever."""
    planner = stack.planner(token="shared", auth_read=True)
    executor = stack.executor(token="shared", peer_token=peer_token, tier_budgets={"disk": 0})
    admin = ConnectOptions(token="shared")
    with PlannerClient(address(planner.port), admin) as client:
        client.deploy([DeploySpec(address(executor.port), QUALITY)], timeout=60)
    with ExecutorClient(address(executor.port), admin) as client:
        tight = _cpu(client).used_bytes // 2
        assert client.set_budget("cpu", tight).replan_started
        state, detail = _settled_replan(client)
    if peer_token is None:
        assert state is ReplanState.APPLIED, (state, detail)
        with ExecutorClient(address(executor.port)) as client:
            assert _cpu(client).used_bytes <= tight
    else:
        assert state is ReplanState.FAILED and "Unauthenticated" in detail, (state, detail)


def _cpu(client: ExecutorClient) -> TierStatus:
    return next(t for t in client.info().tiers if t.name == "cpu")


def _settled_replan(client: ExecutorClient, timeout: float = 60.0) -> tuple[ReplanState, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.info()
        if info.replan_state in (ReplanState.APPLIED, ReplanState.FAILED):
            return info.replan_state, info.replan_detail
        time.sleep(0.1)
    raise AssertionError(f"re-plan still {info.replan_state} after {timeout:.0f}s")


def test_planner_reaches_a_tls_executor(stack, profile_file, tmp_path):
    certs = make_certs(tmp_path)
    executor = stack.executor(tls_cert=certs.server_cert, tls_key=certs.server_key, tier_budgets={"disk": 0})
    planner = stack.planner(peer_tls_ca=certs.ca)
    cleartext = stack.planner()
    target = [DeploySpec(f"localhost:{executor.port}", QUALITY)]
    with PlannerClient(address(cleartext.port)) as client, pytest.raises(Unavailable):
        client.deploy(target, timeout=30)
    with PlannerClient(address(planner.port)) as client:
        outcome = client.deploy(target, timeout=60)
    with ExecutorClient(f"localhost:{executor.port}", ConnectOptions(tls_ca=certs.ca)) as client:
        info = client.info()
        assert info.plan == outcome[0].plan and info.standing_target == QUALITY  # the deploy landed


def test_mutual_tls_refuses_a_certificate_from_another_ca(stack, tmp_path):
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    ours, theirs = make_certs(tmp_path / "ours"), make_certs(tmp_path / "theirs")
    executor = stack.executor(
        tls_cert=ours.server_cert, tls_key=ours.server_key, tls_client_ca=ours.ca, tier_budgets={"disk": 0}
    )
    target = f"localhost:{executor.port}"
    stranger = ConnectOptions(
        tls_ca=ours.ca, tls_cert=theirs.client_cert, tls_key=theirs.client_key, timeout=10
    )
    member = ConnectOptions(tls_ca=ours.ca, tls_cert=ours.client_cert, tls_key=ours.client_key, timeout=10)
    with ExecutorClient(target, stranger) as client, pytest.raises(Unavailable):
        client.info()
    with ExecutorClient(target, member) as client:
        assert client.info().plan is not None


def test_planner_deploys_to_an_executor_that_requires_mutual_tls(stack, profile_file, tmp_path):
    certs = make_certs(tmp_path)
    executor = stack.executor(
        tls_cert=certs.server_cert, tls_key=certs.server_key, tls_client_ca=certs.ca, tier_budgets={"disk": 0}
    )
    no_cert = stack.planner(peer_tls_ca=certs.ca)
    planner = stack.planner(
        peer_tls_ca=certs.ca, peer_tls_cert=certs.client_cert, peer_tls_key=certs.client_key
    )
    target = [DeploySpec(f"localhost:{executor.port}", QUALITY)]
    with PlannerClient(address(no_cert.port)) as client, pytest.raises(Unavailable):
        client.deploy(target, timeout=30)
    with PlannerClient(address(planner.port)) as client:
        outcome = client.deploy(target, timeout=60)
    member = ConnectOptions(tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key)
    with ExecutorClient(f"localhost:{executor.port}", member) as client:
        info = client.info()
        assert info.plan == outcome[0].plan and info.standing_target == QUALITY  # the deploy landed


def test_the_peer_client_certificate_comes_from_flags_or_the_environment(tmp_path):
    certs = make_certs(tmp_path)
    cert, key = str(certs.client_cert), str(certs.client_key)
    planner = PlannerServerConfig.from_env_and_args(
        _parsed("planner", "--peer-tls-cert", cert, "--peer-tls-key", key), env={}
    )
    executor = ExecutorServerConfig.from_env_and_args(
        _parsed("executor"), env={"MOEQOS_PEER_TLS_CERT": cert, "MOEQOS_PEER_TLS_KEY": key}
    )
    for options in (planner.peer_options(), executor.peer_options()):
        assert (options.tls_cert, options.tls_key) == (certs.client_cert, certs.client_key)
    with pytest.raises(ValueError, match="peer_tls_key"):
        PlannerServerConfig(peer_tls_cert=certs.client_cert)


class _Spy(ex_grpc.ExecutorServiceServicer):
    """An 'executor' that records the metadata it is sent and answers nothing."""

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[str, str], ...]] = []

    def GetProfile(self, request, context):
        self.seen.append(tuple(context.invocation_metadata()))
        context.abort(grpc.StatusCode.UNAVAILABLE, "spy")


def test_an_anonymous_caller_cannot_make_the_planner_send_its_token_elsewhere(stack):
    """Plan fetches the profile from the address it is given: on a planner with a token, naming an
    address needs that token (issue 16), so an anonymous caller cannot make the planner dial anything,
    let alone send its token there."""
    spy = _Spy()
    server = grpc.server(ThreadPoolExecutor(2))
    ex_grpc.add_ExecutorServiceServicer_to_server(spy, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        planner = stack.planner(token="planner-secret")
        with PlannerClient(address(planner.port)) as anonymous, pytest.raises(Unauthenticated):
            anonymous.plan(QUALITY, executor=f"127.0.0.1:{port}")
        with (
            PlannerClient(address(planner.port), ConnectOptions(token="not-the-token")) as guessing,
            pytest.raises(Unauthenticated),
        ):
            guessing.plan(QUALITY, executor=f"127.0.0.1:{port}")
    finally:
        server.stop(0)
    assert spy.seen == [], "the planner dialled an address an unauthenticated caller chose"


def test_health_probe_speaks_tls(stack, tmp_path, capsys):
    """`moeqos health` (the compose healthcheck) probes a TLS server when given its CA."""
    from moeqos.cli.main import main

    certs = make_certs(tmp_path)
    planner = stack.planner(tls_cert=certs.server_cert, tls_key=certs.server_key)
    target = f"localhost:{planner.port}"
    assert main(["health", target, "--tls-ca", str(certs.ca)]) == 0
    assert capsys.readouterr().out.strip() == f"{target}: SERVING"
    assert main(["health", target]) == 1  # plaintext against a TLS server
    assert "UNAVAILABLE" in capsys.readouterr().out
