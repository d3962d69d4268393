"""The services of the mesh: how to run each one, which proto package it owns, where its settings live, and
where the other processes reach it.

The launcher starts them from this list, the gateway routes each proto package to its owner, and services find
each other by name (`address_of("training")`): a peer's address comes from the registry, never from the peer's
own settings class, so a deployment where each service runs elsewhere sets only `VM_<NAME>_GRPC_HOST` (and
`VM_<NAME>_GRPC_PORT`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.common.settings import GrpcServerSettings


class PeerAddress(BaseSettings):
    """Where the other processes reach one service: its `VM_<NAME>_GRPC_HOST` and `VM_<NAME>_GRPC_PORT`, the
    variables the service's own settings read too (docs/configuration.md)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    grpc_host: str = "127.0.0.1"
    grpc_port: int

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The registry passes each service's default port in; the environment wins over it.
        return env_settings, init_settings

    @property
    def grpc_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"


@dataclass(frozen=True)
class MeshService:
    name: str
    module: str  # run as `python -m <module>`
    proto_package: str  # every gRPC service in this package is served by this process
    settings_class: str  # "module:Class"
    grpc_port: int  # the default of VM_<NAME>_GRPC_PORT

    def settings(self) -> GrpcServerSettings:
        module, _, cls = self.settings_class.partition(":")
        return getattr(importlib.import_module(module), cls)()

    def address(self) -> PeerAddress:
        return PeerAddress(_env_prefix=f"VM_{self.name.upper()}_", grpc_port=self.grpc_port)


MESH_SERVICES: tuple[MeshService, ...] = (
    MeshService(
        "dataset", "services.dataset", "visionmesh.dataset.v1", "services.dataset.settings:DatasetSettings", 50051
    ),
    MeshService(
        "training", "services.training", "visionmesh.training.v1", "services.training.settings:TrainingSettings", 50052
    ),
    MeshService(
        "inference",
        "services.inference",
        "visionmesh.inference.v1",
        "services.inference.settings:InferenceSettings",
        50053,
    ),
    MeshService(
        "segmentation",
        "services.segmentation",
        "visionmesh.segmentation.v1",
        "services.segmentation.settings:SegmentationSettings",
        50054,
    ),
    MeshService("ocr", "services.ocr", "visionmesh.ocr.v1", "services.ocr.settings:OcrSettings", 50055),
)


def address_of(name: str) -> PeerAddress:
    """Where the mesh service called `name` is reached (read from the environment at each call)."""
    for service in MESH_SERVICES:
        if service.name == name:
            return service.address()
    raise KeyError(f"no mesh service is called {name!r}; the mesh has {', '.join(s.name for s in MESH_SERVICES)}")


def owner_of(grpc_service: str) -> MeshService | None:
    """The mesh service that serves a fully qualified gRPC service name."""
    package = grpc_service.rpartition(".")[0]
    return next((service for service in MESH_SERVICES if service.proto_package == package), None)
