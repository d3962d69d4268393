"""Generate Python gRPC code and Envoy's descriptor set from every .proto under protos/, then the API reference.

Run by `./mesh setup` (only when a .proto changed). Outputs under build/ (not committed):
  build/gen/python/          importable as `visionmesh.<service>.v1.<name>_pb2[_grpc]`
  build/descriptors/visionmesh.pb   the descriptor set that Envoy's gRPC-JSON transcoder and the gateway's
                                    reflection service load
  build/openapi.json         the OpenAPI document Envoy serves at /openapi.json
and docs/routes.md (committed): route -> service -> RPC -> proto and servicer files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import google.api
import grpc_tools
from grpc_tools import protoc

PROTOS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTOS_DIR.parent
BUILD_DIR = REPO_ROOT / "build"
PYTHON_OUT = BUILD_DIR / "gen" / "python"
DESCRIPTOR_SET = BUILD_DIR / "descriptors" / "visionmesh.pb"


def include_dirs() -> list[Path]:
    # google/api/*.proto ship in googleapis-common-protos, google/protobuf/*.proto in grpcio-tools.
    googleapis = Path(google.api.__path__[0]).parent.parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    return [PROTOS_DIR, googleapis, well_known]


def proto_files() -> list[Path]:
    return sorted(PROTOS_DIR.rglob("*.proto"))


def run_protoc(args: list[str]) -> None:
    if protoc.main(["grpc_tools.protoc", *args]) != 0:
        sys.exit(f"protoc failed: {' '.join(args)}")


def write_api_reference() -> None:
    # gateway/ reads the descriptor set through the code just generated: a process with both on its path.
    path = os.pathsep.join([str(REPO_ROOT), str(PYTHON_OUT), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "gateway", "docs", "--descriptor-set", str(DESCRIPTOR_SET)]
    subprocess.run(command, check=True, cwd=REPO_ROOT, env=os.environ | {"PYTHONPATH": path})


def main() -> None:
    sources = [str(p.relative_to(PROTOS_DIR)) for p in proto_files()]
    includes = [f"-I{d}" for d in include_dirs()]
    # Generate into a fresh directory, then swap it in, so a failed run never leaves half a package.
    staging = PYTHON_OUT.with_name("python.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    run_protoc([*includes, f"--python_out={staging}", f"--pyi_out={staging}", f"--grpc_python_out={staging}", *sources])
    DESCRIPTOR_SET.parent.mkdir(parents=True, exist_ok=True)
    run_protoc(
        [
            *includes,
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={DESCRIPTOR_SET}",
            *sources,
        ]
    )
    shutil.rmtree(PYTHON_OUT, ignore_errors=True)
    staging.rename(PYTHON_OUT)
    print(f"generated {len(sources)} proto file(s) into {PYTHON_OUT} and {DESCRIPTOR_SET}")
    write_api_reference()


if __name__ == "__main__":
    main()
