"""Files served over HTTP from 127.0.0.1, for the routes that fetch image_url inputs (the test and benchmark
platforms allow that address: VM_FETCH_ALLOWED_NETWORKS)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from synthetic.pages import encode


class ImageServer:
    """Files under `root` at http://127.0.0.1:<port>/<name>."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return self.url(name)

    def put_image(self, name: str, image: Image.Image, image_format: str = "PNG") -> str:
        return self.put(name, encode(image, image_format))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:
        pass


@contextmanager
def image_server(root: Path) -> Iterator[ImageServer]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ImageServer(root, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
