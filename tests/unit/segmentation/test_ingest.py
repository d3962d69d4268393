"""Ingest tasks: stored uploads, results written before the row says 200, failures with their err, and tasks a
crash interrupted run again (at most max_attempts times)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from services.common.envelope import EnvelopeError, Err
from services.common.geometry import Box
from services.common.image_urls import LoadedImage
from services.common.storage.db import create_db_engine, migrate, session_factory
from services.common.work import WorkQueue
from services.segmentation.domain.ingest import KIND, IngestTasks
from services.segmentation.domain.service import PageAnalysis
from services.segmentation.domain.tree import PageElement, build_schema
from services.segmentation.storage.files import SegmentationFiles
from services.segmentation.storage.tables import MIGRATIONS, VERSION_TABLE, Base, WorkItemRow


def _png(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


async def _analyse(image: LoadedImage) -> PageAnalysis:
    """The page analysis stands in for the service's (segmentation and classification are tested elsewhere):
    one component covering the image."""
    height, width = image.rgb.shape[:2]
    schema = build_schema([PageElement(Box(0, 0, width, height), "Image")])
    return PageAnalysis(schema, width, height, "layout")


async def _unreadable(url: str) -> LoadedImage:
    raise EnvelopeError(Err.READ_URL_FAIL, f"Could not read {url}")


@pytest.fixture
def tasks_factory(tmp_path: Path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'segmentation.sqlite3'}")
    migrate(engine, MIGRATIONS, Base.metadata, version_table=VERSION_TABLE)
    db = session_factory(engine)
    files = SegmentationFiles(tmp_path / "data")
    files.prepare()

    def make(max_attempts: int = 2) -> IngestTasks:
        return IngestTasks(
            db, files, analyse=_analyse, load_url=_unreadable, segmenter="layout",
            workers=1, max_attempts=max_attempts, max_image_pixels=10_000_000,
        )  # fmt: skip

    yield make, db, files
    engine.dispose()


async def _run_until(tasks: IngestTasks, task_id: str) -> None:
    runner = asyncio.create_task(tasks.run())
    try:
        state = await tasks.wait(task_id, 10)
        assert state.task_status != 300
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def test_an_upload_is_stored_analysed_and_served(tasks_factory, tmp_path: Path) -> None:
    make, _db, files = tasks_factory
    upload = tmp_path / "received.part"
    upload.write_bytes(_png())

    async def scenario() -> None:
        tasks = make()
        task_id = await tasks.submit("u1", upload=upload, image_url="")
        await _run_until(tasks, task_id)
        state = tasks.state(task_id)
        assert state.task_status == 200 and state.finished_at is not None
        assert state.result["page_meta"] == {"width": 64, "height": 48}
        assert state.result["components_map"]["Image-1"]["props"]["style"] == {
            "left": 0, "top": 0, "width": 64, "height": 48,
        }  # fmt: skip
        assert json.loads(files.result_file(task_id).read_text()) == state.result
        download = tasks.open_upload(state.upload_name)
        assert download.content_type == "image/png" and b"".join(download.chunks) == _png()

    asyncio.run(scenario())


def test_failures_are_recorded_with_their_err(tasks_factory, tmp_path: Path) -> None:
    make, _db, _files = tasks_factory
    not_image = tmp_path / "notes.part"
    not_image.write_bytes(b"plain text")

    async def scenario() -> None:
        tasks = make()
        with pytest.raises(EnvelopeError) as refused:
            await tasks.submit("u1", upload=not_image, image_url="")
        assert refused.value.err == Err.INVALID_IMAGE
        with pytest.raises(EnvelopeError) as empty:
            await tasks.submit("u1", upload=None, image_url=" ")
        assert empty.value.err == Err.INVALID_PARAMETER
        task_id = await tasks.submit("u1", upload=None, image_url="http://example.com/a.png")
        await _run_until(tasks, task_id)
        state = tasks.state(task_id)
        assert (state.task_status, state.err) == (400, 801) and "example.com" in state.detail
        with pytest.raises(EnvelopeError) as unknown:
            tasks.state("ingest_nope")
        assert unknown.value.err == Err.UNKNOWN_TASK

    asyncio.run(scenario())


@pytest.mark.parametrize("name", ["../segmentation.sqlite3", "x.png", "", "ingest_0.png/..", ".hidden"])
def test_only_uploads_this_service_named_are_served(tasks_factory, name: str) -> None:
    make, _db, _files = tasks_factory
    with pytest.raises(Exception, match="file not found"):
        make().open_upload(name)


def test_interrupted_tasks_run_again_until_their_attempts_are_spent(tasks_factory, tmp_path: Path) -> None:
    make, db, files = tasks_factory
    # What a killed service leaves: tasks running under its lease, one of them already in its last attempt.
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    killed = WorkQueue(db, WorkItemRow, replica=f"{socket.gethostname()}:{int(ended.stdout)}:killed")
    for task_id, attempts in (("ingest_again", 1), ("ingest_spent", 2)):
        name = f"{task_id}.png"
        (files.uploads_root / name).write_bytes(_png())
        spec = {"upload_name": name, "image_url": None, "segmenter": "layout"}
        killed.submit(task_id, KIND, spec, owner="u", max_attempts=2)
        if attempts == 2:  # cut off once already
            killed.claim([KIND], lease_seconds=3600)
            killed.retry_later(task_id, "the service stopped while it ran")
        assert killed.claim([KIND], lease_seconds=3600).item_id == task_id  # running when it was killed

    async def scenario() -> None:
        tasks = make(max_attempts=2)
        runner = asyncio.create_task(tasks.run())
        try:
            for _ in range(100):
                if all(tasks.state(t).task_status != 300 for t in ("ingest_again", "ingest_spent")):
                    break
                await asyncio.sleep(0.05)
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        assert tasks.state("ingest_again").task_status == 200
        spent = tasks.state("ingest_spent")
        assert (spent.task_status, spent.err) == (400, 808) and "interrupted" in spent.detail

    asyncio.run(scenario())
