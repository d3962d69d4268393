"""Native gRPC: the same methods on the shared port and on the service's own port, health, reflection."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
from google.api import httpbody_pb2
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from visionmesh.dataset.v1 import dataset_pb2 as pb
from visionmesh.dataset.v1 import dataset_pb2_grpc

from launcher.instance import PlatformInstance
from synthetic import datagen
from tests.e2e.api import unzip

pytestmark = pytest.mark.e2e

DATASET_SERVICE = "visionmesh.dataset.v1.DatasetService"
ANNOTATION_SERVICE = "visionmesh.dataset.v1.AnnotationService"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"


@pytest.fixture(params=["shared-port", "service-port"])
def channel(request: pytest.FixtureRequest, platform: PlatformInstance) -> Iterator[grpc.Channel]:
    target = platform.grpc_target if request.param == "shared-port" else platform.service_target("dataset")
    with grpc.insecure_channel(target) as opened:
        yield opened


def _upload_messages(data: bytes) -> Iterator[pb.UploadDatasetRequest]:
    for offset in range(0, len(data), 4096):
        body = httpbody_pb2.HttpBody(data=data[offset : offset + 4096])
        if offset == 0:
            body.content_type = "application/zip"
        yield pb.UploadDatasetRequest(body=body, filename="native.zip" if offset == 0 else "")


def test_native_client_uploads_prepares_and_reads(channel: grpc.Channel, http: httpx.Client) -> None:
    stub = dataset_pb2_grpc.DatasetServiceStub(channel)
    dataset = stub.UploadDataset(_upload_messages(datagen.dataset_zip(count=6)))
    assert dataset.filename == "native.zip" and dataset.status == "uploaded"
    version = stub.PrepareDataset(pb.PrepareDatasetRequest(dataset_id=dataset.dataset_id))
    assert version.version == "v1" and version.train_count + version.val_count == 6
    # What native clients wrote, REST clients read, and vice versa.
    assert http.get(f"/datasets/{dataset.dataset_id}").json()["versions"] == ["v1"]
    fetched = stub.GetDataset(pb.GetDatasetRequest(dataset_id=dataset.dataset_id))
    assert fetched.versions == ["v1"] and fetched.version_info[0].classes == list(datagen.CLASSES)
    chunks = list(stub.ExportAnnotatedDataset(pb.ExportDatasetRequest(dataset_id=dataset.dataset_id)))
    assert chunks[0].content_type == "application/zip"
    assert len(unzip(b"".join(c.data for c in chunks))) == 6 * 2 + 1


def test_errors_carry_grpc_status_codes(channel: grpc.Channel) -> None:
    stub = dataset_pb2_grpc.DatasetServiceStub(channel)
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetDataset(pb.GetDatasetRequest(dataset_id="ds_20000101_000000"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ds_20000101_000000" in missing.value.details()
    with pytest.raises(grpc.RpcError) as bad:
        stub.UploadDataset(_upload_messages(b"not a zip at all"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", DATASET_SERVICE, ANNOTATION_SERVICE):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_services(channel: grpc.Channel) -> None:
    """What `grpcurl -plaintext <host:port> list` and `describe` do."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [listing] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {service.name for service in listing.list_services_response.service}
    assert {DATASET_SERVICE, ANNOTATION_SERVICE, "grpc.health.v1.Health"} <= names
    [described] = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=DATASET_SERVICE)])
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    methods = {m.name for f in files for s in f.service if s.name == "DatasetService" for m in s.method}
    assert {"UploadDataset", "PrepareDataset", "GetDataset", "GetDatasetFile"} <= methods


def test_reflection_v1_lists_and_describes_services(channel: grpc.Channel) -> None:
    """What current grpcurl asks for first: reflection v1. Its messages are v1alpha's with the package renamed
    (identical on the wire), so v1alpha's message classes make a v1 client."""
    info = channel.stream_stream(
        f"/{REFLECTION_V1}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=REFLECTION_V1),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=DATASET_SERVICE),
    ]
    listing, reflection_v1, dataset = info(iter(requests), timeout=10)
    names = {service.name for service in listing.list_services_response.service}
    assert {DATASET_SERVICE, ANNOTATION_SERVICE, "grpc.health.v1.Health", REFLECTION_V1, REFLECTION_V1ALPHA} <= names
    [v1_file] = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reflection_v1.file_descriptor_response.file_descriptor_proto
    ]
    assert v1_file.package == "grpc.reflection.v1"
    assert [(m.name, m.input_type) for s in v1_file.service for m in s.method] == [
        ("ServerReflectionInfo", ".grpc.reflection.v1.ServerReflectionRequest")
    ]
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in dataset.file_descriptor_response.file_descriptor_proto
    ]
    assert "GetDataset" in {m.name for f in files for s in f.service if s.name == "DatasetService" for m in s.method}
