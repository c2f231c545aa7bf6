"""Standard gRPC plumbing on real servers: health transitions, reflection, auth tokens, TLS and mutual
TLS, graceful shutdown."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from moeqos.client import ConnectOptions, DeploySpec, ExecutorClient, PlannerClient, Sampling
from moeqos.core.errors import Unauthenticated, Unavailable
from moeqos.core.plan import Plan
from moeqos.core.qos import QosTarget
from moeqos.executor.server import ExecutorServerConfig, load_runtime

from tests.service.service_harness import address
from tests.service.tls_certs import make_certs

EXECUTOR = "moeqos.executor.v1.ExecutorService"
PLANNER = "moeqos.planner.v1.PlannerService"


def test_health_is_not_serving_until_the_model_is_loaded(stack):
    release = threading.Event()

    def slow_loader(config: ExecutorServerConfig):
        release.wait(60)
        return load_runtime(config)

    handle = stack.executor(wait=False, loader=slow_loader)
    with ExecutorClient(address(handle.port)) as client:
        assert client.health() == "NOT_SERVING"
        assert client.health(EXECUTOR) == "NOT_SERVING"
        with pytest.raises(Unavailable, match="loading"):
            client.info()
        with pytest.raises(Unavailable, match="not serving"):
            client.wait_until_serving(0.3)
        release.set()
        client.wait_until_serving(60)
        assert client.health() == "SERVING" and client.health(EXECUTOR) == "SERVING"
        assert client.info().plan is not None
    stack.bg.run(handle.server.health.enter_graceful_shutdown())
    reply = stack.bg.run(handle.server.health.Check(health_pb2.HealthCheckRequest(service=EXECUTOR), None))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_the_services(executor_address, planner_address):
    for target, service in ((executor_address, EXECUTOR), (planner_address, PLANNER)):
        with grpc.insecure_channel(target) as channel:
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert service in services and "grpc.health.v1.Health" in services


def test_token_guards_state_changing_calls(stack):
    handle = stack.executor(token="s3cret")
    target = address(handle.port)
    plan = Plan.uniform(2, 4, "int8", "cpu")
    with ExecutorClient(target) as anonymous, ExecutorClient(target, ConnectOptions(token="s3cret")) as admin:
        assert anonymous.info().plan is not None  # read-only calls stay open without --auth-read
        assert anonymous.health() == "SERVING"
        for call in (
            lambda c: c.apply_plan(plan),
            lambda c: c.set_budget("cpu", 1 << 20),
            lambda c: c.set_target(QosTarget(min_tokens_per_s=1)),
            lambda c: list(c.measure_profile()),
        ):
            with pytest.raises(Unauthenticated):
                call(anonymous)
        with pytest.raises(Unauthenticated):
            ExecutorClient(target, ConnectOptions(token="wrong")).apply_plan(plan)
        assert admin.apply_plan(plan).experts_changed == 8
        assert admin.set_budget("cpu", 1 << 20).plan_fits


def test_auth_read_guards_read_only_calls_too(stack, planner_address):
    handle = stack.executor(token="s3cret", auth_read=True)
    target = address(handle.port)
    with (
        ExecutorClient(target) as anonymous,
        ExecutorClient(target, ConnectOptions(token="s3cret")) as reader,
    ):
        with pytest.raises(Unauthenticated):
            anonymous.info()
        with pytest.raises(Unauthenticated):
            list(anonymous.generate("hello", Sampling(max_tokens=2)))
        assert anonymous.health() == "SERVING"  # probes stay open
        assert reader.complete("hello", Sampling(max_tokens=2)).stats.generated_tokens == 2


def test_planner_deploy_needs_the_token(stack, executor_address):
    planner = stack.planner(token="p")
    with PlannerClient(address(planner.port)) as client, pytest.raises(Unauthenticated):
        client.deploy([])


def test_tls_and_mutual_tls(stack, tmp_path):
    certs = make_certs(tmp_path)
    plain = stack.executor(tls_cert=certs.server_cert, tls_key=certs.server_key)
    mutual = stack.executor(tls_cert=certs.server_cert, tls_key=certs.server_key, tls_client_ca=certs.ca)
    trusted = ConnectOptions(tls_ca=certs.ca, timeout=10)
    with_cert = ConnectOptions(
        tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key, timeout=10
    )
    with ExecutorClient(address(plain.port), trusted) as client:
        assert client.complete("hello", Sampling(max_tokens=2)).stats.generated_tokens == 2
    with (
        ExecutorClient(address(plain.port), ConnectOptions(timeout=5)) as cleartext,
        pytest.raises(Unavailable),
    ):
        cleartext.info()
    with ExecutorClient(address(mutual.port), with_cert) as client:
        assert client.info().plan is not None
    with ExecutorClient(address(mutual.port), trusted) as no_cert, pytest.raises(Unavailable):
        no_cert.info()


def test_graceful_shutdown_finishes_streams_in_flight(stack):
    handle = stack.executor(grace_seconds=30)
    with ExecutorClient(address(handle.port)) as client:
        stream = client.generate("hello", Sampling(max_tokens=300))
        first = next(stream)
        stopped: Future = stack.bg.submit(handle.stop(30))
        second = next(stream)
        during = stack.bg.run(
            handle.server.health.Check(health_pb2.HealthCheckRequest(service=EXECUTOR), None)
        )
        with (
            ExecutorClient(address(handle.port), ConnectOptions(timeout=5)) as newcomer,
            pytest.raises(Unavailable),
        ):
            newcomer.info()  # new calls are refused while the stream in flight finishes
        rest = list(stream)
        stopped.result(60)
    assert first.token_id is not None and second.token_id is not None
    assert during.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert rest[-1].stats is not None and rest[-1].stats.generated_tokens == 300


def test_undecodable_request_is_invalid_argument(executor_address):
    with grpc.insecure_channel(executor_address) as channel:
        generate = channel.unary_stream(
            "/moeqos.executor.v1.ExecutorService/Generate",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(generate(b"\x0a\x02\xff\xfe", timeout=10))  # field 1 (prompt): invalid UTF-8
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in caught.value.details()


def test_planner_forwards_the_callers_token_to_executors(stack, planner_address):
    handle = stack.executor(token="s3cret", tier_budgets={"cpu": 1 << 20, "disk": 0})
    target = address(handle.port)
    spec = [DeploySpec(target, QosTarget(min_tokens_per_s=0.001))]
    with PlannerClient(planner_address) as anonymous, pytest.raises(Unauthenticated):
        anonymous.deploy(spec)
    with PlannerClient(planner_address, ConnectOptions(token="s3cret")) as planner:
        [outcome] = planner.deploy(spec)
    with ExecutorClient(target) as client:
        assert client.info().plan == outcome.plan
