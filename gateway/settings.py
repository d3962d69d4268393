"""Gateway settings (VM_GATEWAY_* variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.common.settings import REPO_ROOT, GrpcServerSettings


class GatewaySettings(GrpcServerSettings):
    model_config = SettingsConfigDict(env_prefix="VM_GATEWAY_", extra="ignore", frozen=True)

    # The one HTTP entry point: REST (HTTP/1.1) and native gRPC (h2c) on the same port.
    http_port: int = 8000
    # A second port with the same routes, for clients of the 002 document (http://localhost:8001/api/...);
    # 0 = none.
    task_api_port: int = 8001
    # Envoy's admin interface (stats, /ready); always bound to 127.0.0.1.
    admin_port: int = 9901
    # The gateway's own gRPC server (reflection + health for the shared port).
    grpc_port: int = 50050
    # Buffered (non-streaming) request and response bodies: JSON request bodies are read whole to be checked and
    # transcoded; uploads and downloads stream and are not bound by these.
    max_request_body_bytes: int = 1024 * 1024
    max_response_body_bytes: int = 64 * 1024 * 1024
    # Uploads (every streamed-body route: datasets, models, images, videos, screenshots) per client address: a
    # token bucket refilled by `upload_rate_per_second` a second, holding at most `upload_burst`; beyond it 429.
    # The default is above what a 2-core machine serves (about 20 images/s), so only floods meet it. 0 = no limit.
    upload_rate_per_second: int = 50
    upload_burst: int = 100
    # Descriptor set produced by protos/generate.py.
    descriptor_set: Path = REPO_ROOT / "build" / "descriptors" / "visionmesh.pb"
    envoy_log_level: str = "warn"
    # Log every HTTP request (Envoy access log, JSON lines on stdout).
    access_log: bool = False
    # Worker threads of Envoy; 0 = one per core.
    envoy_concurrency: int = 0

    @property
    def extra_http_ports(self) -> list[int]:
        return [self.task_api_port] if self.task_api_port else []

    @property
    def config_dir(self) -> Path:
        return self.data_root / "gateway"
