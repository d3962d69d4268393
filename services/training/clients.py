"""The training service's gRPC clients: the dataset service (the only way it reaches datasets) and the inference
service's model control."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import structlog
import yaml
from visionmesh.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from visionmesh.inference.v1 import inference_pb2, inference_pb2_grpc

from services.common.archives import ZipLimits, copy_entry, open_zip, safe_entries
from services.common.channels import mesh_channel
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.storage.files import remove_tree
from services.training.domain.sources import DatasetVersion

log = structlog.get_logger("training.clients")

_DESCRIBE_TIMEOUT_S = 30.0
_UNLOAD_TIMEOUT_S = 30.0


def _translate(error: grpc.aio.AioRpcError, what: str) -> Exception:
    if error.code() == grpc.StatusCode.NOT_FOUND:
        return NotFound(error.details() or f"{what} not found")
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(error.details() or f"{what} is invalid")
    # The details name the service's address: the log keeps them, the answer says what the client can do.
    log.warning("dataset service call failed", code=error.code().name, details=error.details())
    return Unavailable(f"The dataset service did not answer ({error.code().name}); try again shortly")


class GrpcDatasetSource:
    def __init__(self, address: str, zip_limits: ZipLimits) -> None:
        self._channel = mesh_channel(address, [("grpc.max_receive_message_length", 64 << 20)])
        self._stub = dataset_pb2_grpc.DatasetServiceStub(self._channel)
        self._zip_limits = zip_limits

    async def describe(self, dataset_id: str, version: str) -> DatasetVersion:
        try:
            dataset = await self._stub.GetDataset(
                dataset_pb2.GetDatasetRequest(dataset_id=dataset_id), timeout=_DESCRIBE_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            raise _translate(error, f"Dataset {dataset_id!r}") from error
        if not dataset.version_info:
            raise InvalidArgument(f"Dataset {dataset_id!r} is not prepared: POST /datasets/{dataset_id}/prepare first")
        info = next((v for v in dataset.version_info if v.version == version), None)
        if info is None:
            raise NotFound(
                f"Version {version!r} of dataset {dataset_id!r} not found (versions: "
                f"{', '.join(v.version for v in dataset.version_info)})"
            )
        if not info.classes:
            raise InvalidArgument(f"Dataset {dataset_id!r} {version} has no class names to train on")
        return DatasetVersion(dataset_id, version, list(info.classes), info.train_count, info.val_count)

    async def fetch(self, dataset_id: str, version: str, destination: Path) -> Path:
        """Stream the annotated export into destination/, then rewrite its data.yaml with an absolute path."""
        staging = destination.with_name(f".{destination.name}.partial")
        remove_tree(staging)
        staging.mkdir(parents=True)
        archive_path = staging / "dataset.zip"
        try:
            with open(archive_path, "wb") as handle:
                request = dataset_pb2.ExportDatasetRequest(dataset_id=dataset_id, version=version)
                async for body in self._stub.ExportAnnotatedDataset(request):
                    await asyncio.to_thread(handle.write, body.data)
        except grpc.aio.AioRpcError as error:
            remove_tree(staging)
            raise _translate(error, f"Dataset {dataset_id!r} {version}") from error
        await asyncio.to_thread(self._extract, archive_path, staging)
        remove_tree(destination)
        staging.rename(destination)
        return destination / "data.yaml"

    def _extract(self, archive_path: Path, staging: Path) -> None:
        with open_zip(archive_path) as archive:
            for entry in safe_entries(archive, self._zip_limits):
                target = staging / entry.name
                target.parent.mkdir(parents=True, exist_ok=True)
                copy_entry(archive, entry, target)
        archive_path.unlink()
        config = yaml.safe_load((staging / "data.yaml").read_text())
        # The final location: the directory is renamed from staging to destination right after this.
        config["path"] = str(staging.with_name(staging.name.removeprefix(".").removesuffix(".partial")))
        (staging / "data.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))

    async def close(self) -> None:
        await self._channel.close()


class GrpcServingControl:
    """The inference service's model control: a deleted model is unloaded from Triton at once. Best effort:
    if the inference service is down, it finds out itself (the registry answers 404 for the model)."""

    def __init__(self, address: str) -> None:
        self._channel = mesh_channel(address)
        self._stub = inference_pb2_grpc.ServingControlStub(self._channel)

    async def model_deleted(self, model_id: str) -> None:
        try:
            await self._stub.UnloadModel(inference_pb2.ServedModelRequest(model_id=model_id), timeout=_UNLOAD_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            log.warning("deleted model not unloaded from Triton", model_id=model_id, error=error.details())

    async def close(self) -> None:
        await self._channel.close()
