"""services.inference.domain.tasks: the persistent task queue of the 002 document, on a migrated SQLite
database, with fake runners in place of real inference."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.storage.db import create_db_engine, migrate, session_factory
from services.common.storage.files import STAGING_PREFIX
from services.common.work import WorkQueue
from services.inference.domain.samples import Sample, SampleSet
from services.inference.domain.tasks import KIND, TaskQueue, TaskRecord, TaskRunner
from services.inference.storage.files import InferenceFiles
from services.inference.storage.tables import MIGRATIONS, VERSION_TABLE, Base, WorkItemRow

SAMPLE_NAMES = ("1.jpg", "2.mp4", "10.png")
RESULT_FILES = {"result_001.jpg": b"\xff\xd8jpeg", "result_002.png": b"\x89PNGpng", "output.mp4": b"mp4 bytes"}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'db' / 'inference.sqlite3'}")
    migrate(engine, MIGRATIONS, Base.metadata, VERSION_TABLE)
    yield engine
    engine.dispose()


@pytest.fixture
def db(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def files(tmp_path: Path) -> InferenceFiles:
    return InferenceFiles(tmp_path / "data")


@pytest.fixture
def samples(tmp_path: Path) -> SampleSet:
    root = tmp_path / "samples"
    root.mkdir()
    for name in SAMPLE_NAMES:
        (root / name).write_bytes(b"sample")
    return SampleSet(root)


async def write_results(record: TaskRecord, sample: Sample, output: Path) -> None:
    for name, data in RESULT_FILES.items():
        (output / name).write_bytes(data)
    (output / "detections.txt").write_text("not a served type")
    (output / ".partial.jpg").write_bytes(b"hidden")


async def model_v1() -> str:
    return "model_v1"


def make_queue(
    db: sessionmaker[Session],
    files: InferenceFiles,
    samples: SampleSet,
    runner: TaskRunner = write_results,
    *,
    capacity: int = 50,
    workers: int = 1,
    max_attempts: int = 2,
    resolve_model: Callable[[], Awaitable[str]] = model_v1,
) -> TaskQueue:
    return TaskQueue(
        db,
        files,
        samples,
        runner,
        capacity=capacity,
        workers=workers,
        max_attempts=max_attempts,
        resolve_model=resolve_model,
    )


async def run_until(queue: TaskQueue, done: Callable[[], bool], timeout: float = 10) -> None:
    """Run the workers until `done()`, then cancel them as a service shutdown would."""
    workers = asyncio.create_task(queue.run())
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)
    finally:
        workers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await workers


def all_finished(queue: TaskQueue) -> Callable[[], bool]:
    def finished() -> bool:
        stats = queue.stats()
        return stats.pending == 0 and stats.processing == 0

    return finished


def staging_leftovers(files: InferenceFiles) -> list[str]:
    return [entry.name for entry in files.tasks_root.iterdir() if entry.name.startswith(STAGING_PREFIX)]


def dead_pid() -> int:
    """The PID of a process of this host that has ended."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(ended.stdout)


# -- schema -----------------------------------------------------------------------------------------------


def test_the_migration_creates_exactly_the_tables_of_the_metadata(engine: Engine) -> None:
    assert set(inspect(engine).get_table_names()) == {*Base.metadata.tables, VERSION_TABLE}
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []


def test_tasks_stored_before_the_work_engine_are_kept(
    tmp_path: Path, files: InferenceFiles, samples: SampleSet
) -> None:
    """Migration 0002 moves the rows of inference_tasks into the work items, in the engine's words."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes.update(connection=connection, metadata=Base.metadata, version_table=VERSION_TABLE)
        command.upgrade(config, "0001")
        moment = datetime(2026, 1, 22, 13, 30)
        columns = 'task_id, "index", sample_name, model_id, status, attempts, created_at, completed_at, '
        columns += "inference_time, error_message"
        for task_id, status, attempts, seconds, error in (
            ("00000000-0000-4000-8000-000000000001", "completed", 1, 32.5, None),
            ("00000000-0000-4000-8000-000000000002", "processing", 1, None, None),
            ("00000000-0000-4000-8000-000000000003", "failed", 1, None, "The video has no frames"),
        ):
            connection.exec_driver_sql(
                f"INSERT INTO inference_tasks ({columns}) VALUES (?, 2, '2.mp4', 'model_v1', ?, ?, ?, ?, ?, ?)",
                (task_id, status, attempts, moment, moment if status != "processing" else None, seconds, error),
            )
    migrate(engine, MIGRATIONS, Base.metadata, VERSION_TABLE)
    queue = make_queue(session_factory(engine), files, samples)
    done, cut_off, failed = (queue.get(f"00000000-0000-4000-8000-00000000000{n}") for n in (1, 2, 3))
    assert (done.status, done.inference_time, done.index, done.sample_name) == ("completed", 32.5, 2, "2.mp4")
    assert (cut_off.status, cut_off.attempts) == ("pending", 1)  # runs again, as the old recovery did
    assert (failed.status, failed.error_message) == ("failed", "The video has no frames")
    assert queue.list()[1] == 3
    engine.dispose()


# -- submitting -------------------------------------------------------------------------------------------


def test_submit_stores_a_pending_task_for_the_sample_and_the_resolved_model(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    queue = make_queue(db, files, samples)
    record = asyncio.run(queue.submit(3))
    assert (record.index, record.sample_name, record.model_id) == (3, "10.png", "model_v1")
    assert (record.status, record.attempts, record.started_at, record.completed_at) == ("pending", 0, None, None)
    assert queue.get(record.task_id) == record
    assert queue.stats().pending == 1


def test_submit_refuses_bad_indexes_and_passes_model_errors_through(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    async def no_model() -> str:
        raise Unavailable("No model is ready for serving")

    queue = make_queue(db, files, samples, resolve_model=no_model)
    with pytest.raises(InvalidArgument, match=">= 1"):
        asyncio.run(queue.submit(0))
    with pytest.raises(NotFound, match="has 3 samples"):
        asyncio.run(queue.submit(4))
    with pytest.raises(Unavailable, match="No model"):
        asyncio.run(queue.submit(1))
    assert queue.list()[1] == 0


def test_a_full_queue_accepts_exactly_its_capacity_under_concurrent_submits(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    queue = make_queue(db, files, samples, capacity=3)

    async def submit_many() -> list[TaskRecord | BaseException]:
        return await asyncio.gather(*(queue.submit(1 + n % 3) for n in range(20)), return_exceptions=True)

    outcomes = asyncio.run(submit_many())
    accepted = [outcome for outcome in outcomes if isinstance(outcome, TaskRecord)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, Unavailable)]
    assert (len(accepted), len(refused)) == (3, 17)
    assert "task queue is full: 3 tasks waiting" in refused[0].detail
    assert queue.stats().pending == 3


# -- running ----------------------------------------------------------------------------------------------


def test_a_task_runs_and_publishes_its_result_files(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    seen: list[tuple[TaskRecord, Sample, Path]] = []

    async def runner(record: TaskRecord, sample: Sample, output: Path) -> None:
        seen.append((record, sample, output))
        await write_results(record, sample, output)

    queue = make_queue(db, files, samples, runner)

    async def scenario() -> TaskRecord:
        submitted = await queue.submit(2)
        await run_until(queue, all_finished(queue))
        return submitted

    submitted = asyncio.run(scenario())
    task = queue.get(submitted.task_id)
    assert task.status == "completed" and task.attempts == 1 and task.error_message is None
    assert task.inference_time is not None and task.inference_time >= 0
    assert task.created_at <= task.started_at <= task.completed_at  # type: ignore[operator]
    record, sample, output = seen[0]
    assert (record.status, sample.name, sample.videos) == ("processing", "2.mp4", (samples.get(2).videos[0],))
    assert output.parent == files.tasks_root and output.name.startswith(STAGING_PREFIX)
    url = f"/api/task/{task.task_id}/file/"
    assert [(f.filename, f.type, f.url) for f in queue.result_files(task.task_id)] == [
        ("result_001.jpg", "image", url + "result_001.jpg"),
        ("result_002.png", "image", url + "result_002.png"),
        ("output.mp4", "video", url + "output.mp4"),
    ]
    assert staging_leftovers(files) == []


def test_a_failing_runner_fails_its_task_only_and_the_loop_goes_on(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    async def runner(record: TaskRecord, sample: Sample, output: Path) -> None:
        (output / "half.jpg").write_bytes(b"written before the failure")
        if sample.index == 1:
            raise KeyError("boxes")
        if sample.index == 2:
            raise InvalidArgument("The video has no frames")
        await write_results(record, sample, output)

    queue = make_queue(db, files, samples, runner)

    async def scenario() -> list[TaskRecord]:
        submitted = [await queue.submit(index) for index in (1, 2, 3)]
        await run_until(queue, all_finished(queue))
        return submitted

    first, second, third = (queue.get(task.task_id) for task in asyncio.run(scenario()))
    # An unexpected error's own text may name server paths or addresses: the client gets its kind, the log the rest.
    assert (first.status, first.error_message) == (
        "failed",
        "internal error (KeyError); the service log has the details",
    )
    assert (second.status, second.error_message) == ("failed", "The video has no frames")
    assert first.completed_at is not None and first.inference_time is None
    assert third.status == "completed"
    assert queue.result_files(first.task_id) == []
    assert sorted(entry.name for entry in files.tasks_root.iterdir()) == [third.task_id]


def test_tasks_run_oldest_first(db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet) -> None:
    order: list[str] = []

    async def runner(record: TaskRecord, sample: Sample, output: Path) -> None:
        order.append(record.task_id)

    queue = make_queue(db, files, samples, runner)

    async def scenario() -> list[str]:
        submitted = [(await queue.submit(1 + n % 3)).task_id for n in range(8)]
        await run_until(queue, all_finished(queue))
        return submitted

    assert order == asyncio.run(scenario())


def test_workers_run_that_many_tasks_at_once(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    running, most = 0, 0

    async def runner(record: TaskRecord, sample: Sample, output: Path) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1

    queue = make_queue(db, files, samples, runner, workers=2)

    async def scenario() -> None:
        for index in (1, 2, 3, 1, 2):
            await queue.submit(index)
        await run_until(queue, all_finished(queue))

    asyncio.run(scenario())
    assert most == 2
    assert [task.status for task in queue.list()[0]] == ["completed"] * 5


def test_a_task_fails_when_the_sample_set_changed_since_it_was_submitted(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet, tmp_path: Path
) -> None:
    queue = make_queue(db, files, samples)

    async def scenario() -> str:
        task_id = (await queue.submit(1)).task_id
        (tmp_path / "samples" / "0.jpg").write_bytes(b"inserted before 1.jpg")
        await run_until(queue, all_finished(queue))
        return task_id

    task = queue.get(asyncio.run(scenario()))
    assert task.status == "failed"
    assert (
        task.error_message
        == "The sample set changed after the task was submitted: sample 1 is now '0.jpg', not '1.jpg'"
    )


def test_stats_count_waiting_and_running_tasks_and_tell_whether_the_workers_run(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def runner(record: TaskRecord, sample: Sample, output: Path) -> None:
        started.set()
        await release.wait()

    queue = make_queue(db, files, samples, runner)

    async def scenario() -> None:
        await queue.submit(1)
        await queue.submit(2)
        assert (queue.stats().pending, queue.stats().processing, queue.stats().running) == (2, 0, False)
        workers = asyncio.create_task(queue.run())
        await asyncio.wait_for(started.wait(), 5)
        assert (queue.stats().pending, queue.stats().processing, queue.stats().running) == (1, 1, True)
        release.set()
        async with asyncio.timeout(5):
            while not all_finished(queue)():
                await asyncio.sleep(0.01)
        workers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await workers
        assert queue.stats().running is False

    asyncio.run(scenario())


# -- reading ----------------------------------------------------------------------------------------------


def test_list_pages_newest_first_filters_by_status_and_validates(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    async def runner(record: TaskRecord, sample: Sample, output: Path) -> None:
        if sample.index == 2:
            raise RuntimeError("decoder crashed")

    queue = make_queue(db, files, samples, runner)

    async def scenario() -> list[str]:
        submitted = [(await queue.submit(1 + n % 3)).task_id for n in range(12)]
        await run_until(queue, all_finished(queue))
        return submitted

    newest_first = asyncio.run(scenario())[::-1]
    tasks, total, page, page_size = queue.list()
    assert (page, page_size) == (1, 10)
    assert total == 12 and [task.task_id for task in tasks] == newest_first[:10]
    tasks, total, *_ = queue.list(page=3, page_size=5)
    assert total == 12 and [task.task_id for task in tasks] == newest_first[10:]
    assert queue.list(page=4, page_size=5) == ([], 12, 4, 5)
    failed, total, *_ = queue.list(page_size=100, status="failed")
    assert total == 4 and {task.status for task in failed} == {"failed"}
    assert queue.list(status="completed")[1] == 8
    assert queue.list(status="pending")[:2] == ([], 0)
    for page, page_size, status in (
        (0, None, ""),
        (-1, None, ""),
        (None, 0, ""),
        (None, 101, ""),
        (None, None, "done"),
        (None, None, "PENDING"),
    ):
        with pytest.raises(InvalidArgument):
            queue.list(page, page_size, status)


def test_unknown_and_malformed_task_ids_are_not_found(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    queue = make_queue(db, files, samples)
    task_id = asyncio.run(queue.submit(1)).task_id
    for unknown in ("550e8400-e29b-41d4-a716-446655440000", task_id.upper(), f"{task_id}\n", "../../etc", "x\x00", ""):
        with pytest.raises(NotFound, match="not found"):
            queue.get(unknown)
        with pytest.raises(NotFound):
            queue.result_files(unknown)


def test_result_files_are_served_with_their_content_type_and_nothing_else(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    queue = make_queue(db, files, samples)

    async def scenario() -> str:
        task_id = (await queue.submit(1)).task_id
        await run_until(queue, all_finished(queue))
        return task_id

    task_id = asyncio.run(scenario())
    for filename, content_type in (
        ("result_001.jpg", "image/jpeg"),
        ("result_002.png", "image/png"),
        ("output.mp4", "video/mp4"),
    ):
        download = queue.open_file(task_id, filename)
        assert (download.filename, download.content_type, download.inline) == (filename, content_type, True)
        assert b"".join(download.chunks) == RESULT_FILES[filename]
    (files.data_root / "secret.jpg").write_bytes(b"outside the task's results")
    refused = (
        "../../secret.jpg",
        "..%2F..%2Fsecret.jpg",
        f"../{task_id}/result_001.jpg",
        str(files.task_dir(task_id) / "result_001.jpg"),
        "./result_001.jpg",
        "result_001.jpg/",
        "RESULT_001.JPG",
        "detections.txt",  # published, but not an image or a video
        ".partial.jpg",
        "missing.jpg",
        "",
    )
    for filename in refused:
        with pytest.raises(NotFound, match="not found"):
            queue.open_file(task_id, filename)


def test_a_task_that_has_not_completed_has_no_files(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    queue = make_queue(db, files, samples)
    task_id = asyncio.run(queue.submit(1)).task_id
    assert queue.result_files(task_id) == []
    with pytest.raises(NotFound):
        queue.open_file(task_id, "result_001.jpg")


# -- recovery ---------------------------------------------------------------------------------------------


def interrupt_while_running(queue: TaskQueue, started: asyncio.Event) -> None:
    """A service shutdown in the middle of a task: run() is cancelled while the runner works."""

    async def scenario() -> None:
        workers = asyncio.create_task(queue.run())
        await asyncio.wait_for(started.wait(), 5)
        workers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await workers

    asyncio.run(scenario())


def test_recover_queues_an_interrupted_task_again_and_removes_leftovers(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    queue = make_queue(db, files, samples)
    interrupted = asyncio.run(queue.submit(1)).task_id
    waiting = asyncio.run(queue.submit(2)).task_id
    # What a killed process leaves: the task running under its lease, its staging directory, and maybe the
    # published directory of a task whose `completed` was never committed.
    killed = WorkQueue(db, WorkItemRow, replica=f"{socket.gethostname()}:{dead_pid()}:killed")
    assert killed.claim([KIND], lease_seconds=3600).item_id == interrupted
    assert queue.get(interrupted).status == "processing"
    (files.tasks_root / f"{STAGING_PREFIX}0123").mkdir(parents=True)
    (files.tasks_root / f"{STAGING_PREFIX}0123" / "result_001.jpg").write_bytes(b"half")
    files.task_dir(interrupted).mkdir()
    (files.tasks_root / "stray-file").write_bytes(b"")

    queue = make_queue(db, files, samples)  # a new start of the service
    queue.recover()
    assert list(files.tasks_root.iterdir()) == []

    asyncio.run(run_until(queue, all_finished(queue)))
    assert (queue.get(interrupted).status, queue.get(interrupted).attempts) == ("completed", 2)
    assert queue.get(waiting).status == "completed"
    assert sorted(entry.name for entry in files.tasks_root.iterdir()) == sorted([interrupted, waiting])

    queue.recover()  # completed tasks keep their results
    assert len(queue.result_files(interrupted)) == 3


def test_recover_gives_up_on_a_task_interrupted_max_attempts_times(
    db: sessionmaker[Session], files: InferenceFiles, samples: SampleSet
) -> None:
    def blocking_queue() -> tuple[TaskQueue, asyncio.Event]:
        started = asyncio.Event()

        async def runner(record: TaskRecord, sample: Sample, output: Path) -> None:
            (output / "result_001.jpg").write_bytes(b"partial")
            started.set()
            await asyncio.Event().wait()  # until cancelled

        return make_queue(db, files, samples, runner, max_attempts=2), started

    queue, started = blocking_queue()
    task_id = asyncio.run(queue.submit(1)).task_id
    for attempt, status in ((1, "pending"), (2, "failed")):
        queue, started = blocking_queue()
        queue.recover()
        interrupt_while_running(queue, started)
        task = queue.get(task_id)
        # The shutdown hands the task back at once (another replica, or the next start, runs it), counted.
        assert (task.status, task.attempts) == (status, attempt)
        assert staging_leftovers(files) == []  # a cancelled run still removes its staging directory
    queue.recover()
    task = queue.get(task_id)
    assert (task.status, task.error_message) == ("failed", "interrupted 2 times (the service stopped while it ran)")
    assert task.completed_at is not None
