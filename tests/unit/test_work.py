"""The work engine (services/common/work) on SQLite and on a real PostgreSQL: claims, leases, rescue, the retry
policy, stop/resume/delete, bounded queues, and worker pools of several replicas sharing one table."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase, sessionmaker

from services.common.errors import Conflict, InvalidArgument
from services.common.storage.db import NAMING_CONVENTION, create_db_engine, session_factory
from services.common.work import (
    Failed,
    QueueFull,
    Retry,
    Stopped,
    WorkContext,
    WorkerPool,
    WorkItem,
    WorkItemColumns,
    WorkKind,
    WorkQueue,
    WorkStatus,
)
from tests.postgres import postgres_bin_dir, postgres_server


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ItemRow(WorkItemColumns, Base):
    __tablename__ = "test_work_items"


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL server not installed (./mesh test installs it)")
    with postgres_server(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker]:
    url = (
        f"sqlite:///{tmp_path / 'work.sqlite3'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    engine = create_db_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield session_factory(engine)
    engine.dispose()


def _queue(db: sessionmaker, replica: str) -> WorkQueue:
    return WorkQueue(db, ItemRow, replica=replica)


def _replica(name: str) -> str:
    """A replica on another host (so that its leases are only rescued once they expire)."""
    return f"elsewhere-{name}:1:x"


def test_items_are_claimed_oldest_first_by_priority_and_once(db: sessionmaker) -> None:
    queue = _queue(db, _replica("a"))
    for number in range(3):
        queue.submit(f"i{number}", "k", {"n": number})
    queue.submit("urgent", "k", {}, priority=-1)
    queue.submit("other-kind", "other", {})
    claimed = [queue.claim(["k"], 30) for _ in range(5)]
    assert [item.item_id if item else None for item in claimed] == ["urgent", "i0", "i1", "i2", None]
    first = claimed[0]
    assert first.status == WorkStatus.RUNNING and first.attempts == 1 and first.lease_owner == queue.replica
    assert first.started_at is not None and first.lease_expires_at is not None


def test_outcomes_are_recorded_only_while_the_lease_is_held(db: sessionmaker) -> None:
    a, b = _queue(db, _replica("a")), _queue(db, _replica("b"))
    a.submit("x", "k", {"spec": 1}, max_attempts=2)
    assert a.claim(["k"], 0.05) is not None
    assert a.report("x", {"step": 1}) and a.renew("x", 0.05) is not None
    time.sleep(0.1)
    [rescued] = b.rescue(["k"])
    assert rescued.status == WorkStatus.QUEUED and rescued.errors == ["interrupted"]
    assert b.claim(["k"], 30).attempts == 2
    # The first replica lost the item: nothing it writes counts any more.
    assert a.renew("x", 30) is None and not a.report("x", {"step": 2})
    assert a.finish("x", WorkStatus.COMPLETED, result={"by": "a"}) is None
    done = b.finish("x", WorkStatus.COMPLETED, result={"by": "b"})
    assert done.status == WorkStatus.COMPLETED and done.result == {"by": "b"} and done.progress == {"step": 1}
    assert done.lease_owner is None and done.finished_at is not None


def test_the_attempts_are_bounded_and_every_reason_is_kept(db: sessionmaker) -> None:
    queue = _queue(db, _replica("a"))
    queue.submit("x", "k", {}, max_attempts=2)
    queue.claim(["k"], 30)
    assert queue.retry_later("x", "first try cut off").status == WorkStatus.QUEUED
    queue.claim(["k"], 30)
    failed = queue.retry_later("x", "second try cut off")
    assert failed.status == WorkStatus.FAILED
    assert failed.errors == ["first try cut off", "interrupted 2 times (second try cut off)"]
    assert failed.error == "interrupted 2 times (second try cut off)"


def test_a_dead_process_of_this_host_is_rescued_before_its_lease_expires(db: sessionmaker) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    gone = _queue(db, f"{socket.gethostname()}:{int(dead.stdout)}:old")
    alive = _queue(db, f"{socket.gethostname()}:{os.getppid()}:other")  # a live process of this host
    here = _queue(db, f"{socket.gethostname()}:{os.getpid()}:now")
    gone.submit("of-a-dead-process", "k", {}, max_attempts=3)
    alive.submit("of-a-live-process", "k", {})
    assert gone.claim(["k"], 600).item_id == "of-a-dead-process"
    assert alive.claim(["k"], 600).item_id == "of-a-live-process"
    assert [item.item_id for item in here.rescue(["k"])] == ["of-a-dead-process"]


def test_kinds_that_wait_for_a_resume_are_interrupted(db: sessionmaker) -> None:
    a, b = _queue(db, _replica("a")), _queue(db, _replica("b"))
    a.submit("job", "training", {"epochs": 3})
    a.claim(["training"], 0.01)
    time.sleep(0.05)
    [interrupted] = b.rescue(["training"], interrupt_kinds={"training"}, reason="the service died")
    assert interrupted.status == WorkStatus.INTERRUPTED and interrupted.errors == ["the service died"]
    resumed = b.resume("job", spec={"epochs": 3, "resume": True})
    assert resumed.status == WorkStatus.QUEUED and resumed.attempts == 0 and resumed.spec["resume"] is True
    with pytest.raises(Conflict):
        b.resume("job")


def test_stop_resume_delete_and_a_bounded_queue(db: sessionmaker) -> None:
    queue = _queue(db, _replica("a"))
    queue.submit("waiting", "k", {}, capacity=2)
    queue.submit("running", "k", {}, capacity=2)
    with pytest.raises(QueueFull, match="full"):
        queue.submit("third", "k", {}, capacity=2)
    assert queue.stop("waiting").status == WorkStatus.STOPPED  # a queued item stops at once
    queue.claim(["k"], 30)
    asked = queue.stop("running")
    assert asked.status == WorkStatus.RUNNING and asked.stop_requested  # a running one is asked to
    assert queue.renew("running", 30).stop_requested
    queue.submit("third", "k", {}, capacity=2)  # room again
    assert queue.resume("waiting").status == WorkStatus.QUEUED
    assert queue.delete("waiting").item_id == "waiting" and queue.find("waiting") is None
    items, total = queue.list(["k"], statuses=[WorkStatus.RUNNING, WorkStatus.QUEUED])
    assert total == 2 and [item.item_id for item in items] == ["third", "running"]  # newest first
    with pytest.raises(InvalidArgument):
        queue.list(["k"], page_size=5000)


def test_concurrent_replicas_claim_every_item_exactly_once(db: sessionmaker) -> None:
    queues = [_queue(db, _replica(f"r{n}")) for n in range(4)]
    for number in range(60):
        queues[0].submit(f"i{number:02d}", "k", {})

    def drain(queue: WorkQueue) -> list[str]:
        taken = []
        while (item := queue.claim(["k"], 30)) is not None:
            taken.append(item.item_id)
        return taken

    with ThreadPoolExecutor(4) as pool:
        taken = [item for share in pool.map(drain, queues) for item in share]
    assert sorted(taken) == [f"i{number:02d}" for number in range(60)]


# -- worker pools ------------------------------------------------------------------------------------------


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_handlers_outcomes(db: sessionmaker) -> None:
    queue = _queue(db, _replica("a"))

    async def handle(item: WorkItem, context: WorkContext) -> dict:
        match item.spec["do"]:
            case "complete":
                await context.report({"percent": 50})
                return {"answer": 42}
            case "refuse":
                raise InvalidArgument("sample 9 does not exist")
            case "crash":
                raise OSError("/srv/secret/path is gone")
            case "stop":
                raise Stopped({"kept": "best.pt"})
            case "retry":
                raise Retry("Triton is restarting")
            case "fail":
                raise Failed("bad prompt format", {"err": 806})
        raise AssertionError(item.spec)

    async def scenario() -> None:
        pool = WorkerPool(queue, [WorkKind("k", handle, workers=2)], poll_seconds=0.05)
        runner = asyncio.create_task(pool.run())
        for do in ("complete", "refuse", "crash", "stop", "fail"):
            queue.submit(do, "k", {"do": do})
        queue.submit("retry", "k", {"do": "retry"}, max_attempts=2)
        pool.notify("k")
        assert (await pool.wait_finished("complete", 10)).status == WorkStatus.COMPLETED
        assert await pool.wait_finished("no-such-item", 1) is None
        await _until(lambda: all(queue.get(i).finished for i in ("refuse", "crash", "stop", "retry", "fail")))
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(scenario())
    complete = queue.get("complete")
    assert complete.status == WorkStatus.COMPLETED and complete.result == {"answer": 42}
    assert complete.progress == {"percent": 50}
    assert queue.get("refuse").error == "sample 9 does not exist"
    crashed = queue.get("crash")
    assert crashed.status == WorkStatus.FAILED and "OSError" in crashed.error and "/srv" not in crashed.error
    assert queue.get("stop").status == WorkStatus.STOPPED and queue.get("stop").result == {"kept": "best.pt"}
    failed = queue.get("fail")
    assert (failed.status, failed.error, failed.result) == (WorkStatus.FAILED, "bad prompt format", {"err": 806})
    retried = queue.get("retry")
    assert retried.status == WorkStatus.FAILED and retried.attempts == 2 and len(retried.errors) == 2


def test_a_stop_reaches_the_running_handler_on_any_replica(db: sessionmaker) -> None:
    runner_queue, api_queue = _queue(db, _replica("runner")), _queue(db, _replica("api"))

    async def forever(item: WorkItem, context: WorkContext) -> dict:
        await asyncio.sleep(3600)
        return {}

    async def until_stopped(item: WorkItem, context: WorkContext) -> dict:
        await context.stop_requested.wait()
        raise Stopped({"stopped_at": "epoch 2"})

    async def scenario() -> None:
        kinds = [WorkKind("cancel", forever), WorkKind("graceful", until_stopped, handles_stop=True)]
        pool = WorkerPool(runner_queue, kinds, lease_seconds=0.3, poll_seconds=0.05)
        runner = asyncio.create_task(pool.run())
        runner_queue.submit("a", "cancel", {})
        runner_queue.submit("b", "graceful", {})
        await _until(lambda: runner_queue.get("a").status == "running" and runner_queue.get("b").status == "running")
        api_queue.stop("a")  # another replica: seen at the runner's next heartbeat
        await pool.stop("b")  # this replica: at once
        await _until(lambda: runner_queue.get("a").finished and runner_queue.get("b").finished)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(scenario())
    assert runner_queue.get("a").status == WorkStatus.STOPPED
    assert runner_queue.get("b").status == WorkStatus.STOPPED and runner_queue.get("b").result["stopped_at"]


def test_replicas_share_the_work_and_a_stopped_one_hands_its_items_back(db: sessionmaker) -> None:
    """Two replicas on one table; one stops mid-item (its items go back to the queue at once, counted as an
    attempt) and the other finishes everything: every item is completed exactly once."""
    done: dict[str, list[str]] = {}

    def handler_of(replica: str):
        async def handle(item: WorkItem, context: WorkContext) -> dict:
            await asyncio.sleep(0.05)
            done.setdefault(item.item_id, []).append(replica)
            return {"by": replica}

        return handle

    async def scenario() -> None:
        first = WorkerPool(_queue(db, _replica("1")), [WorkKind("k", handler_of("1"))], poll_seconds=0.02)
        second = WorkerPool(_queue(db, _replica("2")), [WorkKind("k", handler_of("2"))], poll_seconds=0.02)
        for number in range(20):
            first.queue.submit(f"i{number:02d}", "k", {}, max_attempts=3)
        runners = [asyncio.create_task(pool.run()) for pool in (first, second)]
        await _until(lambda: len(done) >= 5)
        runners[0].cancel()  # the first replica stops, maybe in the middle of an item
        with pytest.raises(asyncio.CancelledError):
            await runners[0]
        await _until(lambda: all(second.queue.get(f"i{n:02d}").finished for n in range(20)))
        runners[1].cancel()
        with pytest.raises(asyncio.CancelledError):
            await runners[1]

    asyncio.run(scenario())
    queue = _queue(db, _replica("check"))
    items, total = queue.list(["k"])
    assert total == 20 and {item.status for item in items} == {WorkStatus.COMPLETED}
    assert all(len(replicas) == 1 for replicas in done.values()) and len(done) == 20
    assert {item.result["by"] for item in items} == {"1", "2"}
