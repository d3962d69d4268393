"""services.segmentation.domain.resources: training resources fetched from a local HTTP server into SQLite and
PNG files, with the document's per-entry codes (900 added, 901 bad type or URL, 902 unreadable, 601 no image)."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.common.envelope import EnvelopeError, Err
from services.common.fetch import FetchPolicy
from services.common.storage.db import create_db_engine, migrate, session_factory
from services.segmentation.domain.resources import TrainingResources
from services.segmentation.storage.files import SegmentationFiles
from services.segmentation.storage.tables import MIGRATIONS, VERSION_TABLE, Base, TrainingResourceRow

POLICY = FetchPolicy.from_strings(1024 * 1024, 5.0, "127.0.0.1/32")


def png(colour: tuple[int, int, int], size: tuple[int, int] = (30, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


BODIES = {
    "/red.png": (png((220, 30, 30)), "image/png"),
    "/blue.png": (png((30, 30, 220), (20, 20)), "image/png"),
    "/notes.txt": (b"not an image at all", "text/plain"),
}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body, content_type = BODIES.get(self.path, (b"missing", "text/plain"))
        self.send_response(200 if self.path in BODIES else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@dataclass
class Store:
    db: sessionmaker[Session]
    files: SegmentationFiles
    resources: TrainingResources

    def rows(self) -> list[TrainingResourceRow]:
        with self.db() as session:
            return list(session.scalars(select(TrainingResourceRow).order_by(TrainingResourceRow.key)))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'segmentation.db'}")
    migrate(engine, MIGRATIONS, Base.metadata, VERSION_TABLE)
    db = session_factory(engine)
    files = SegmentationFiles(tmp_path / "data")
    files.prepare()
    return Store(db, files, TrainingResources(db, files, POLICY, max_pixels=1_000_000))


def test_each_entry_gets_its_code(store: Store, base_url: str) -> None:
    dataset = {
        "imgseg_1": (f"{base_url}/red.png", "Button"),
        "imgseg_2": (f"{base_url}/notes.txt", "Input"),
        "imgseg_3": (f"{base_url}/gone.png", "Input"),
        "imgseg_4": (f"{base_url}/red.png", "Spaceship"),
        "imgseg_5": ("", "Button"),
        "imgseg_6": ("ftp://127.0.0.1/red.png", "Button"),
        "imgseg_7": (f"{base_url}/blue.png", "checkbox"),  # type names are case-insensitive
    }
    codes = asyncio.run(store.resources.add_resources("user_0630_1", dataset))
    assert codes == {
        "imgseg_1": 900,
        "imgseg_2": 601,
        "imgseg_3": 902,
        "imgseg_4": 901,
        "imgseg_5": 901,
        "imgseg_6": 901,
        "imgseg_7": 900,
    }
    rows = store.rows()
    assert [(row.key, row.component_type, row.user_id) for row in rows] == [
        ("imgseg_1", "Button", "user_0630_1"),
        ("imgseg_7", "Checkbox", "user_0630_1"),
    ]
    with Image.open(store.files.resource_file(rows[0].resource_id)) as saved:
        assert saved.format == "PNG" and saved.size == (30, 12)
        assert np.asarray(saved.convert("RGB"))[5, 5].tolist() == [220, 30, 30]


def test_adding_a_key_again_replaces_it(store: Store, base_url: str) -> None:
    add = store.resources.add_resources
    assert asyncio.run(add("u1", {"k": (f"{base_url}/red.png", "Button")})) == {"k": 900}
    assert asyncio.run(add("u2", {"k": (f"{base_url}/red.png", "Input")})) == {"k": 900}  # another user's key
    first = {row.user_id: row for row in store.rows()}["u1"]
    assert asyncio.run(add("u1", {"k": (f"{base_url}/blue.png", "Icon")})) == {"k": 900}
    rows = {row.user_id: row for row in store.rows()}
    assert len(store.rows()) == 2
    replaced = rows["u1"]
    assert (replaced.component_type, replaced.source_url) == ("Icon", f"{base_url}/blue.png")
    assert not store.files.resource_file(first.resource_id).exists()
    with Image.open(store.files.resource_file(replaced.resource_id)) as saved:
        assert saved.size == (20, 20)
    assert sorted(path.name for path in store.files.resources_root.iterdir()) == sorted(
        f"{row.resource_id}.png" for row in rows.values()
    )


def test_many_entries_are_fetched_concurrently(store: Store, base_url: str) -> None:
    dataset = {f"key_{index:02d}": (f"{base_url}/red.png", "Bar") for index in range(20)}
    codes = asyncio.run(store.resources.add_resources("u", dataset))
    assert set(codes.values()) == {900} and len(store.rows()) == 20


@pytest.mark.parametrize(("user_id", "key"), [("", "k"), ("u" * 129, "k"), ("u", ""), ("u", "k" * 129)])
def test_ids_that_do_not_fit_refuse_the_request(store: Store, user_id: str, key: str) -> None:
    with pytest.raises(EnvelopeError) as raised:
        asyncio.run(store.resources.add_resources(user_id, {key: ("http://127.0.0.1/x.png", "Button")}))
    assert raised.value.err == Err.INVALID_PARAMETER
    assert store.rows() == []
