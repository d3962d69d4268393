"""Settings from environment variables.

Every process reads the shared `VM_*` variables (data root, logging, tracing, bind address); each service
adds its own `VM_<SERVICE>_*` variables in one settings class of its own (see `services/*/settings.py`).
docs/configuration.md lists them all with their defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class CommonSettings(BaseSettings):
    """Settings shared by every process of the mesh (explicit `VM_*` names, no per-service prefix)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    data_root: Path = Field(REPO_ROOT / "data", validation_alias="VM_DATA_ROOT")
    log_level: str = Field("info", validation_alias="VM_LOG_LEVEL")
    # auto: readable when stderr is a terminal, JSON lines otherwise (containers, CI, files).
    log_format: Literal["auto", "console", "json"] = Field("auto", validation_alias="VM_LOG_FORMAT")
    # Traces are off unless an exporter is chosen; otlp sends to otel_endpoint over gRPC.
    otel_exporter: Literal["none", "console", "otlp"] = Field("none", validation_alias="VM_OTEL_EXPORTER")
    otel_endpoint: str = Field("http://127.0.0.1:4317", validation_alias="VM_OTEL_ENDPOINT")
    # Interface every gRPC server binds; 0.0.0.0 in containers.
    bind_host: str = Field("127.0.0.1", validation_alias="VM_BIND_HOST")


class GrpcServerSettings(CommonSettings):
    """A process that runs a gRPC server. Subclasses set `env_prefix` (e.g. VM_DATASET_) and the port."""

    # Host other processes (Envoy, peers) use to reach this server, and its gRPC port.
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    # Largest gRPC message the server accepts or sends (uploads are streamed in smaller chunks).
    grpc_max_message_bytes: int = 64 * 1024 * 1024
    # Threads that run blocking domain work (database, files) for the asyncio gRPC server.
    worker_threads: int = 32

    @property
    def grpc_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"


class ServiceSettings(GrpcServerSettings):
    """A domain service of the mesh: a gRPC server that owns metadata and files."""

    # SQLAlchemy URL of the service's metadata store; empty = embedded SQLite under the data root.
    database_url: str = ""

    def sqlalchemy_url(self, service: str) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_root / 'db' / f'{service}.sqlite3'}"


class UrlFetchSettings(BaseSettings):
    """How services fetch the image URLs callers give them (document 004's image_url inputs): mesh-wide `VM_FETCH_*`
    variables, so one allow-list covers every service."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    # Largest image fetched (bytes), and the time allowed for the whole fetch (DNS, redirects, body).
    fetch_max_bytes: int = Field(32 * 1024**2, validation_alias="VM_FETCH_MAX_BYTES")
    fetch_timeout_seconds: float = Field(10.0, validation_alias="VM_FETCH_TIMEOUT_SECONDS")
    # Addresses fetched although not public (comma-separated CIDRs, e.g. "10.0.0.0/8,127.0.0.1/32"). Loopback,
    # private, link-local and other non-global addresses are refused unless listed here.
    fetch_allowed_networks: str = Field("", validation_alias="VM_FETCH_ALLOWED_NETWORKS")
