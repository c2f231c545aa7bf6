"""Server reflection in both protocol versions: `grpc.reflection.v1alpha` and `grpc.reflection.v1`.

Current tools (grpcurl, @grpc/reflection for Node.js, Postman) ask for v1 first, and some only for v1.
grpcio-reflection (checked up to 1.85) serves only v1alpha. v1 is the same protocol under a new package
name: its messages are field for field those of v1alpha and the bytes on the wire do not carry the
package, so the one v1alpha servicer answers both. The v1 file descriptor is added to the pool as well,
so reflection can describe the v1 service it lists.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE = reflection.SERVICE_NAME
"""`grpc.reflection.v1alpha.ServerReflection`."""
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
"""The name the v1 service's file has in grpc/grpc, so tools that ask for it by name find it."""


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1alpha and v1 on `server`, listing `service_names` and both reflection services."""
    _add_v1_descriptor(descriptor_pool.Default())
    servicer = reflection.aio.ReflectionServicer((*service_names, V1ALPHA_SERVICE, V1_SERVICE))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (V1ALPHA_SERVICE, V1_SERVICE):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),)
        )


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add the v1 reflection file (v1alpha's, renamed) to `pool` unless something already did."""
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)
    v1 = text_format.Parse(
        text_format.MessageToString(alpha).replace("v1alpha", "v1"), descriptor_pb2.FileDescriptorProto()
    )
    v1.name = V1_FILE
    pool.AddSerializedFile(v1.SerializeToString())
