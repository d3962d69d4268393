"""Test data of the 004 routes: rendered screenshots with known layouts, served over HTTP from 127.0.0.1 (the
test platform allows that address for image_url fetching), and the document's envelope checks."""

from __future__ import annotations

import functools
import io
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from PIL import Image

from services.segmentation.domain.rendering import RenderedPage, render_component, render_page


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


def encode(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def page(seed: int, width: int = 1280, height: int = 800) -> RenderedPage:
    return render_page(random.Random(seed), width, height)


def component(kind: str, seed: int) -> Image.Image:
    return render_component(kind, random.Random(seed))


def ok_payload(response: httpx.Response) -> dict:
    """The document's success envelope; returns its payload."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["code"], body["status"], body["message"]) == (100, 200, "成功"), body
    return body["payload"]


def failure(response: httpx.Response, status: int, err: int | str) -> dict:
    """The document's failure envelope with HTTP `status` and payload.err `err`; returns its payload."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert (body["code"], body["status"], body["message"]) == (-3000, status, "失败"), body
    assert body["payload"]["err"] == err, body
    return body["payload"]


def wait_for_training(http: httpx.Client, task_id: str, timeout: float = 900, user_id: str = "t") -> dict:
    """Poll queryTrain as `user_id` (a training's owner; any user for the built-in classifier's)."""
    deadline = time.monotonic() + timeout
    while True:
        query = {"train_task_id": task_id, "user_id": user_id}
        payload = ok_payload(http.post("/imgSeg/v1/queryTrain", json=query))
        if payload["task_status"] != 300:
            return payload
        assert time.monotonic() < deadline, payload
        time.sleep(2)
