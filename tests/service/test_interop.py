"""What a client in another language meets on real servers (issue 17): the stock health Watch stream,
reflection v1 as well as v1alpha, malformed peer addresses refused, the bearer scheme in any case, and a
busy port refused instead of shared."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as refl
from moeqos.api.reflection import V1_SERVICE
from moeqos.client import ConnectOptions, DeploySpec, ExecutorClient, PlannerClient
from moeqos.core.errors import InvalidArgument
from moeqos.core.qos import QosTarget
from moeqos.proto.planner.v1 import planner_pb2, planner_pb2_grpc

from tests.service.service_harness import address

EXECUTOR = "moeqos.executor.v1.ExecutorService"
PLANNER = "moeqos.planner.v1.PlannerService"


@pytest.mark.parametrize("which", ["executor", "planner"])
def test_health_watch_streams_the_status(which, request):
    target = request.getfixturevalue(f"{which}_address")
    service = EXECUTOR if which == "executor" else PLANNER
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", service):
            call = stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert next(call).status == health_pb2.HealthCheckResponse.SERVING
            call.cancel()


def _reflect(
    target: str, service: str, requests: list[refl.ServerReflectionRequest]
) -> list[refl.ServerReflectionResponse]:
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=refl.ServerReflectionRequest.SerializeToString,
            response_deserializer=refl.ServerReflectionResponse.FromString,
        )
        return list(call(iter(requests), timeout=10))


@pytest.mark.parametrize(
    "version", ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
)
def test_reflection_answers_v1_and_v1alpha(version, executor_address, planner_address):
    for target, service in ((executor_address, EXECUTOR), (planner_address, PLANNER)):
        listed, own, reflection = _reflect(
            target,
            version,
            [
                refl.ServerReflectionRequest(list_services=""),
                refl.ServerReflectionRequest(file_containing_symbol=service),
                refl.ServerReflectionRequest(file_containing_symbol=V1_SERVICE),
            ],
        )
        names = {s.name for s in listed.list_services_response.service}
        assert {
            service,
            "grpc.health.v1.Health",
            V1_SERVICE,
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names
        assert own.file_descriptor_response.file_descriptor_proto, own
        assert reflection.file_descriptor_response.file_descriptor_proto, reflection


@pytest.mark.parametrize("bad", ["::bad::", "host", "host:0", "host:99999", "-x-:80", "unix:", "[zz]:80"])
def test_deploy_refuses_a_malformed_address_and_changes_nothing(bad, executor_address, planner_address):
    with ExecutorClient(executor_address) as executor, PlannerClient(planner_address) as planner:
        before = executor.info()
        target = QosTarget(min_tokens_per_s=0.001)
        with pytest.raises(InvalidArgument, match="planner_address"):
            planner.deploy([DeploySpec(executor_address, target)], bad)
        with pytest.raises(InvalidArgument, match="executor address"):
            planner.deploy([DeploySpec(bad, target)])
        after = executor.info()
    assert after.plan == before.plan and after.planner_address == before.planner_address


def test_set_target_refuses_a_malformed_planner_address(executor_address):
    with ExecutorClient(executor_address) as executor:
        before = executor.info()
        with pytest.raises(InvalidArgument, match="planner_address"):
            executor.set_target(QosTarget(min_tokens_per_s=1.0), "::bad::")
        after = executor.info()
        executor.set_target(before.standing_target, "unix:/tmp/planner.sock")  # a Unix socket is fine
        assert executor.info().planner_address == "unix:/tmp/planner.sock"
        executor.set_target(before.standing_target, before.planner_address or "127.0.0.1:1")
    assert after.standing_target == before.standing_target and after.planner_address == before.planner_address


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(scheme, stack):
    server = stack.planner(token="s3cret")
    with grpc.insecure_channel(address(server.port)) as channel:
        deploy = planner_pb2_grpc.PlannerServiceStub(channel).Deploy
        with pytest.raises(grpc.RpcError) as refused:
            deploy(planner_pb2.DeployRequest(), metadata=(("authorization", f"{scheme} wrong"),), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as passed:  # past auth: refused for having no targets
            deploy(planner_pb2.DeployRequest(), metadata=(("authorization", f"{scheme} s3cret"),), timeout=10)
        assert passed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_second_server_on_a_busy_port_refuses_to_start(stack, planner):
    with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:.*in use"):
        stack.planner(listen=address(planner.port))
    with PlannerClient(address(planner.port), ConnectOptions(timeout=10)) as client:
        assert client.health() == "SERVING"  # the first one is untouched
