"""Gateway entry point.

python -m gateway serve                      the gateway's gRPC server (reflection + health for :8000)
python -m gateway render [--output FILE] [--descriptor PATH]
                                             write Envoy's config (PATH: where Envoy reads the
                                             descriptor set, when that differs, e.g. in a container)
python -m gateway docs [--descriptor-set PATH]
                                             write the API reference: docs/routes.md and
                                             build/openapi.json (./mesh setup runs it)
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from gateway.api_reference import write_openapi
from gateway.envoy_config import write_config
from gateway.mesh_grpc import serve_mesh_grpc
from gateway.routes_table import write_routes_table
from gateway.settings import GatewaySettings
from services.common.logging import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateway", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the gateway's gRPC server")
    render = commands.add_parser("render", help="write the Envoy config")
    render.add_argument("--output", type=Path)
    render.add_argument("--descriptor", type=Path)
    docs = commands.add_parser("docs", help="write docs/routes.md and build/openapi.json")
    docs.add_argument("--descriptor-set", type=Path)
    args = parser.parse_args()
    settings = GatewaySettings()
    configure_logging("gateway", settings)
    if args.command == "render":
        print(write_config(settings, args.output, args.descriptor))
    elif args.command == "docs":
        descriptor_set = args.descriptor_set or settings.descriptor_set
        print(write_routes_table(descriptor_set))
        print(write_openapi(descriptor_set))
    else:
        asyncio.run(serve_mesh_grpc(settings))


if __name__ == "__main__":
    main()
