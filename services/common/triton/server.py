"""Running the tritonserver bundled in the nvidia-pytriton wheel: its backend directory, command line and
environment, and a readiness probe. The launcher starts it; tests start it the same way.

The bundled Python backend runs each model instance in a stub process that embeds libpython and imports
packages through the first `python3` on PATH (PYTHONPATH is ignored), hence server_environment().
"""

from __future__ import annotations

import filecmp
import importlib.util
import os
import shutil
import sys
import sysconfig
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from tritonclient.grpc.aio import InferenceServerClient

from services.common.heap import MALLOC_ENVIRONMENT
from services.common.triton.settings import TritonSettings

# The server waits this long for in-flight requests on SIGTERM: under the launcher's 15 s before it kills.
_EXIT_TIMEOUT_S = 10
_STUB_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def bundled_server_root() -> Path:
    """pytriton/tritonserver/ of the installed nvidia-pytriton wheel (bin/, backends/, python_backend_stubs/)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: no tritonserver to run (./mesh setup installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def server_binary(settings: TritonSettings) -> Path:
    return settings.server_binary or bundled_server_root() / "bin" / "tritonserver"


def backend_directory(settings: TritonSettings) -> Path:
    return settings.work_dir / "backends"


def prepare_backends(settings: TritonSettings) -> Path:
    """Fill <work_dir>/backends/python/ with the bundled Python backend and this interpreter's stub; returns
    the backend directory. Files already up to date are left alone: a running server has them mapped."""
    bundled = bundled_server_root()
    python_backend = backend_directory(settings) / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    sources = [path for path in (bundled / "backends" / "python").iterdir() if path.suffix in (".so", ".py")]
    stub = bundled / "python_backend_stubs" / _STUB_PYTHON / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"The bundled Python backend has no stub for Python {_STUB_PYTHON}")
    for source in [*sources, stub]:
        target = python_backend / source.name
        if target.exists() and filecmp.cmp(source, target, shallow=True):
            continue
        # Copied beside the target and renamed over it: never rewritten in place under a running server.
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        shutil.copy2(source, partial)
        os.replace(partial, target)
    return backend_directory(settings)


def server_command(settings: TritonSettings) -> list[str]:
    """tritonserver on gRPC only, models loaded and unloaded by clients (explicit control)."""
    command = [
        str(server_binary(settings)),
        f"--model-repository={settings.repository}",
        "--model-control-mode=explicit",
        f"--backend-directory={backend_directory(settings)}",
        "--allow-http=false",
        f"--grpc-address={settings.bind_host}",
        f"--grpc-port={settings.grpc_port}",
        # A model that fails to load must not stop the server, nor make the server itself "not ready"
        # (model readiness is asked per model).
        "--exit-on-error=false",
        "--strict-readiness=false",
        f"--exit-timeout-secs={_EXIT_TIMEOUT_S}",
        f"--log-info={str(settings.log_level in ('debug', 'info')).lower()}",
        f"--log-verbose={int(settings.log_level == 'debug')}",
    ]
    if settings.metrics_port:
        command += [
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            f"--metrics-address={settings.bind_host}",
            f"--metrics-port={settings.metrics_port}",
        ]
    else:
        command.append("--allow-metrics=false")
    return command


def server_environment() -> dict[str, str]:
    """Variables to lay over the environment for the server, so its Python-backend stubs run this
    interpreter: its libpython first (not the system's, of another patch release), then the wheel's own
    libraries (the copied stub's relative RPATH no longer reaches them), and its venv's `python3` first on
    PATH (the stub finds site-packages through it)."""
    # The wheel's libraries carry hashed names (libcudart-09529672.so...): nothing else picks them up.
    wheel_libraries = bundled_server_root().parent.parent / "nvidia_pytriton.libs"
    libraries = [str(sysconfig.get_config_var("LIBDIR")), str(wheel_libraries)]
    return {
        "LD_LIBRARY_PATH": _search_path(libraries, os.environ.get("LD_LIBRARY_PATH")),
        "PATH": _search_path([str(Path(sys.executable).parent)], os.environ.get("PATH")),
        # Multi-MB tensors per request stay on the heap (the stubs inherit this too).
        **MALLOC_ENVIRONMENT,
    }


def _search_path(first: list[str], rest: str | None) -> str:
    return os.pathsep.join([*first, rest] if rest else first)


def triton_ready(address: str) -> Callable[[], Awaitable[bool]]:
    """An async probe: True when the Triton at host:port answers that it is ready."""

    async def probe() -> bool:
        client = InferenceServerClient(address)
        try:
            return bool(await client.is_server_ready(client_timeout=1))
        except Exception:  # noqa: BLE001 - not answering, in any way, is not ready
            return False
        finally:
            await client.close()

    return probe
