"""gRPC server reflection under both names clients ask for: `grpc.reflection.v1.ServerReflection` (current
grpcurl, grpc-go, Postman) and `grpc.reflection.v1alpha.ServerReflection` (older clients).

grpcio-reflection implements only v1alpha. v1 is the same protocol with the package renamed (every message
and field number is identical on the wire), so one v1alpha servicer answers both names, and the v1 file
descriptor, derived from v1alpha's by renaming its package, is added to the pool so that reflection can
describe the v1 service too.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
REFLECTION_SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
_V1_FILE = "grpc/reflection/v1/reflection.proto"  # its name in grpc's own repository


def _v1alpha_file() -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    # The package name is in the package and in every type reference (".grpc.reflection.v1alpha.Foo").
    renamed = text_format.MessageToString(_v1alpha_file()).replace("grpc.reflection.v1alpha", "grpc.reflection.v1")
    v1 = text_format.Parse(renamed, descriptor_pb2.FileDescriptorProto())
    v1.name = _V1_FILE
    return v1


def _ensure_reflection_files(pool: descriptor_pool.DescriptorPool) -> None:
    """Both reflection files in `pool` (a pool built from a descriptor set may lack them)."""
    for service_name, file in ((V1ALPHA_SERVICE_NAME, _v1alpha_file), (V1_SERVICE_NAME, _v1_file)):
        try:
            pool.FindServiceByName(service_name)
        except KeyError:
            pool.AddSerializedFile(file().SerializeToString())


def enable_reflection(
    server: grpc.aio.Server, service_names: Iterable[str], pool: descriptor_pool.DescriptorPool | None = None
) -> None:
    """Serve reflection v1 and v1alpha on `server`, listing `service_names` and both reflection services;
    descriptors come from `pool` (the process's default pool unless given)."""
    pool = pool or descriptor_pool.Default()
    _ensure_reflection_files(pool)
    servicer = reflection.aio.ReflectionServicer([*service_names, *REFLECTION_SERVICE_NAMES], pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1_handler}),)
    )
