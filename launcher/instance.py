"""A whole platform in the background, for tests and benchmarks: its own free ports and data root.

    with PlatformInstance(tmp_path) as platform:
        httpx.get(f"{platform.base_url}/datasets")

It runs the real launcher (`python -m launcher`), so what is tested is what `./mesh up` starts, and `start`
returns when the launcher says the platform is up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from services.common.settings import REPO_ROOT
from services.registry import MESH_SERVICES

# The launcher gives up by itself when a component is not ready in time (VM_LAUNCHER_*_READY_TIMEOUT_SECONDS,
# the segmentation service's long enough for a first start's classifier training): this only bounds a
# launcher that hangs.
_START_TIMEOUT_S = 3600.0


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and one this process has not handed out before: the kernel may offer
    the same free port twice in a row, and two components of one platform must not both get it."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class PlatformInstance:
    def __init__(self, data_root: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_root = data_root
        self.http_port = free_port()
        self.task_api_port = free_port()
        self.grpc_ports = {service.name: free_port() for service in MESH_SERVICES}
        self.triton_grpc_port = free_port()
        self.env = {
            **os.environ,
            "VM_DATA_ROOT": str(data_root),
            "VM_LOG_FORMAT": "json",
            "VM_GATEWAY_HTTP_PORT": str(self.http_port),
            "VM_GATEWAY_TASK_API_PORT": str(self.task_api_port),
            "VM_GATEWAY_ADMIN_PORT": str(free_port()),
            "VM_GATEWAY_GRPC_PORT": str(free_port()),
            **{f"VM_{name.upper()}_GRPC_PORT": str(port) for name, port in self.grpc_ports.items()},
            "VM_TRITON_GRPC_PORT": str(self.triton_grpc_port),
            "VM_TRITON_METRICS_PORT": str(free_port()),
            **(extra_env or {}),
        }
        self.log_path = data_root / "platform.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        """The shared port, for native gRPC clients."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def triton_target(self) -> str:
        """Triton's gRPC endpoint (the tritonserver the launcher started)."""
        return f"127.0.0.1:{self.triton_grpc_port}"

    def service_target(self, name: str) -> str:
        return f"127.0.0.1:{self.grpc_ports[name]}"

    def start(self) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self._process = subprocess.Popen(
            [sys.executable, "-m", "launcher"], cwd=REPO_ROOT, env=self.env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"platform exited during start-up; see {self.log_path}:\n{self.log_tail()}")
            if self._launcher_state().get("status") == "up":
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"platform not up within {_START_TIMEOUT_S:.0f}s; see {self.log_path}")

    def _launcher_state(self) -> dict:
        """The state file of this instance's running launcher ({} before it has written one, or when stopped)."""
        if self._process is None:
            return {}
        try:
            state = json.loads((self.data_root / "run" / "processes.json").read_text())
        except (OSError, ValueError):
            return {}
        return state if state.get("launcher") == self._process.pid else {}

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def launcher_pid(self) -> int | None:
        """The running launcher's PID (None when stopped)."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def pid_of(self, component: str) -> int:
        return int(self._launcher_state()["components"][component]["pid"])

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> PlatformInstance:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
