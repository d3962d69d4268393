"""The services of the mesh: how to run each one, which proto package it owns, where its settings live.

The launcher starts them from this list and the gateway routes each proto package to its owner.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from services.common.settings import GrpcServerSettings


@dataclass(frozen=True)
class MeshService:
    name: str
    module: str  # run as `python -m <module>`
    proto_package: str  # every gRPC service in this package is served by this process
    settings_class: str  # "module:Class"

    def settings(self) -> GrpcServerSettings:
        module, _, cls = self.settings_class.partition(":")
        return getattr(importlib.import_module(module), cls)()


MESH_SERVICES: tuple[MeshService, ...] = (
    MeshService("dataset", "services.dataset", "visionmesh.dataset.v1", "services.dataset.settings:DatasetSettings"),
    MeshService(
        "training", "services.training", "visionmesh.training.v1", "services.training.settings:TrainingSettings"
    ),
    MeshService(
        "inference", "services.inference", "visionmesh.inference.v1", "services.inference.settings:InferenceSettings"
    ),
    MeshService(
        "segmentation",
        "services.segmentation",
        "visionmesh.segmentation.v1",
        "services.segmentation.settings:SegmentationSettings",
    ),
    MeshService("ocr", "services.ocr", "visionmesh.ocr.v1", "services.ocr.settings:OcrSettings"),
)


def owner_of(grpc_service: str) -> MeshService | None:
    """The mesh service that serves a fully qualified gRPC service name."""
    package = grpc_service.rpartition(".")[0]
    return next((service for service in MESH_SERVICES if service.proto_package == package), None)
