"""services.segmentation.domain.training: the training APIs' rules (800, 803, 805, 807, owners), and tiny real trainings
through the real worker process (a few rendered images per type, one or two epochs) into a Triton repository
on disk: done, stopped, failed, and resumed after a shut-down and after the service was killed."""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from services.common.clock import utcnow
from services.common.envelope import EnvelopeError, Err, TaskStatus
from services.common.storage.db import create_db_engine, migrate, session_factory, transaction
from services.common.storage.files import atomic_write_bytes
from services.common.triton.settings import TritonSettings
from services.segmentation.domain.classification import ClassifierModel
from services.segmentation.domain.training import (
    DEFAULT_MODEL_ID,
    SPEC_FILE,
    TrainingManager,
    TrainingState,
)
from services.segmentation.storage.files import SegmentationFiles
from services.segmentation.storage.tables import (
    MIGRATIONS,
    VERSION_TABLE,
    Base,
    TrainingResourceRow,
    TrainingTaskRow,
)

TRAINING_DEADLINE_S = 120.0
TINY = {"epochs": 1, "batch_size": 8, "learning_rate": 0.001}
OWNER = "u"  # the user who starts the tests' trainings


@dataclass
class Setup:
    root: Path
    db: sessionmaker[Session]
    files: SegmentationFiles
    ready_models: list[str] = field(default_factory=list)

    @property
    def repository(self) -> Path:
        return self.root / "triton" / "repository"

    def manager(self, *, builtin_epochs: int = 1, default_model_id: str = "", max_attempts: int = 3) -> TrainingManager:
        async def on_model_ready(model_id: str) -> None:
            self.ready_models.append(model_id)

        return TrainingManager(
            self.db,
            self.files,
            repository=self.repository,
            triton=TritonSettings(data_root=self.root),
            on_model_ready=on_model_ready,
            default_model_id=default_model_id,
            builtin_epochs=builtin_epochs,
            builtin_per_class=4,
            builtin_heldout_per_class=2,
            training_rendered_per_class=4,
            training_threads=1,
            training_max_attempts=max_attempts,
            poll_seconds=0.1,
        )

    def row(self, task_id: str) -> TrainingTaskRow:
        with self.db() as session:
            row = session.get(TrainingTaskRow, task_id)
            assert row is not None
            return row

    def update(self, task_id: str, **changes: Any) -> None:
        with transaction(self.db) as session:
            row = session.get(TrainingTaskRow, task_id)
            assert row is not None
            for key, value in changes.items():
                setattr(row, key, value)

    def add_resource(self, user_id: str, key: str, component_type: str, colour: tuple[int, int, int]) -> str:
        resource_id = str(uuid.uuid4())
        buffer = io.BytesIO()
        Image.new("RGB", (48, 20), colour).save(buffer, format="PNG")
        atomic_write_bytes(self.files.resource_file(resource_id), buffer.getvalue())
        with transaction(self.db) as session:
            session.add(
                TrainingResourceRow(
                    resource_id=resource_id,
                    user_id=user_id,
                    key=key,
                    component_type=component_type,
                    source_url=f"http://example.test/{key}.png",
                    created_at=utcnow(),
                )
            )
        return resource_id


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'segmentation.db'}")
    migrate(engine, MIGRATIONS, Base.metadata, VERSION_TABLE)
    files = SegmentationFiles(tmp_path / "data")
    files.prepare()
    return Setup(tmp_path, session_factory(engine), files)


def run_with(manager: TrainingManager, scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run `scenario` while `manager.run()` supervises trainings in the background; shut down afterwards."""

    async def main() -> Any:
        runner = asyncio.create_task(manager.run())
        try:
            return await scenario()
        finally:
            await manager.shutdown()
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    return asyncio.run(main())


async def wait_for_state(
    manager: TrainingManager, task_id: str, condition: Callable[[TrainingState], bool]
) -> TrainingState:
    async with asyncio.timeout(TRAINING_DEADLINE_S):
        while not condition(state := await manager.query(task_id, OWNER)):
            await asyncio.sleep(0.05)
    return state


def finished(state: TrainingState) -> bool:
    return state.task_status != TaskStatus.RUNNING


def assert_in_repository(setup: Setup, task_id: str, labels: list[str]) -> None:
    model_dir = setup.repository / task_id
    assert f'name: "{task_id}"' in (model_dir / "config.pbtxt").read_text()
    assert (model_dir / "1" / "model.onnx").stat().st_size > 1_000_000  # a ResNet-18
    assert (model_dir / "labels.txt").read_text().split() == labels


# -- the API's rules -----------------------------------------------------------------------------------------


def test_start_answers_running_and_refuses_a_second_training(setup: Setup) -> None:
    manager = setup.manager()
    first = asyncio.run(manager.start("user_0629_01", "train", **TINY))
    assert first.task_id.startswith("Train-imgSeg-") and uuid.UUID(first.task_id.removeprefix("Train-imgSeg-"))
    assert (first.user_id, first.task_type, first.task_status, first.model_ready) == (
        "user_0629_01",
        "train",
        300,
        False,
    )
    assert first.progress == {
        "acc": 0.0,
        "loss": 0.0,
        "epoch": 0,
        "modelEpoch": 0,
        "labels": [],
        "singleAcc": [],
        "dataset_num": 0,
        "valAccList": [],
        "valLossList": [],
    }
    with pytest.raises(EnvelopeError) as raised:
        asyncio.run(manager.start("user_0629_01", "train", **TINY))
    assert raised.value.err == Err.TRAINING_RUNNING and first.task_id in raised.value.detail  # the user's own
    with pytest.raises(EnvelopeError) as raised:
        asyncio.run(manager.start("someone_else", "train", **TINY))
    assert raised.value.err == Err.TRAINING_RUNNING and first.task_id not in raised.value.detail


def test_the_builtin_training_counts_as_running(setup: Setup) -> None:
    manager = setup.manager()
    manager.ensure_builtin()
    manager.ensure_builtin()  # once only
    builtin = setup.row(DEFAULT_MODEL_ID)
    assert (builtin.user_id, builtin.task_status) == ("system", 300)
    spec = json.loads((setup.files.training_dir(DEFAULT_MODEL_ID) / SPEC_FILE).read_text())
    assert (spec["epochs"], spec["rendered_per_class"], spec["heldout_per_class"], spec["resources"]) == (1, 4, 2, [])
    with pytest.raises(EnvelopeError) as raised:
        asyncio.run(manager.start(OWNER, "train", **TINY))
    assert raised.value.err == Err.TRAINING_RUNNING


def test_a_failed_builtin_training_is_retried_at_the_next_start(setup: Setup) -> None:
    manager = setup.manager()
    manager.ensure_builtin()
    setup.update(DEFAULT_MODEL_ID, task_status=400, attempts=3, detail="the training worker exited with code 1")
    manager.ensure_builtin()
    retried = setup.row(DEFAULT_MODEL_ID)
    assert (retried.task_status, retried.attempts, retried.detail) == (300, 0, None)


def test_zero_builtin_epochs_means_no_builtin_classifier(setup: Setup) -> None:
    manager = setup.manager(builtin_epochs=0)
    manager.ensure_builtin()
    with pytest.raises(EnvelopeError) as raised:
        manager.resolve_model("")
    assert raised.value.err == Err.MODEL_ID_ERROR and "turned off" in raised.value.detail


@pytest.mark.parametrize(
    ("task_type", "changes"),
    [
        ("infer", {}),
        ("train", {"epochs": 0}),
        ("train", {"epochs": 201}),
        ("train", {"batch_size": 0}),
        ("train", {"batch_size": 513}),
        ("train", {"learning_rate": 0.0}),
        ("train", {"learning_rate": 1.5}),
        ("train", {"learning_rate": float("nan")}),
    ],
)
def test_invalid_parameters_are_807(setup: Setup, task_type: str, changes: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError) as raised:
        asyncio.run(setup.manager().start(OWNER, task_type, **{**TINY, **changes}))
    assert raised.value.err == Err.INVALID_PARAMETER


def test_unknown_tasks_are_803(setup: Setup) -> None:
    manager = setup.manager()
    for task_id in ("Train-imgseg-7de43a30-fa97-4da2-ace6-ebbc4746bd0f", ""):
        for call in (manager.query, manager.stop):
            with pytest.raises(EnvelopeError) as raised:
                asyncio.run(call(task_id, OWNER))
            assert raised.value.err == Err.UNKNOWN_TASK


@pytest.mark.parametrize("user_id", ["", "   ", "x" * 129])
def test_a_missing_or_invalid_user_id_is_807(setup: Setup, user_id: str) -> None:
    manager = setup.manager()
    task_id = asyncio.run(manager.start(OWNER, "train", **TINY)).task_id
    calls = [
        manager.start(user_id, "train", **TINY),
        manager.query(task_id, user_id),
        manager.stop(task_id, user_id),
    ]
    for call in calls:
        with pytest.raises(EnvelopeError) as raised:
            asyncio.run(call)
        assert raised.value.err == Err.INVALID_PARAMETER and "user_id" in raised.value.detail
    assert setup.row(task_id).task_status == TaskStatus.RUNNING


def test_only_the_owner_may_query_or_stop_a_training(setup: Setup) -> None:
    manager = setup.manager()
    task_id = asyncio.run(manager.start("alice", "train", **TINY)).task_id
    unknown = "Train-imgSeg-7de43a30-fa97-4da2-ace6-ebbc4746bd0f"
    for call in (manager.query, manager.stop):
        with pytest.raises(EnvelopeError) as theirs:
            asyncio.run(call(task_id, "mallory"))
        with pytest.raises(EnvelopeError) as nobodys:
            asyncio.run(call(unknown, "mallory"))
        # Exactly what an unknown id gets: nothing tells mallory that alice's task exists.
        assert (theirs.value.err, theirs.value.http_status) == (nobodys.value.err, nobodys.value.http_status)
        assert theirs.value.err == Err.UNKNOWN_TASK
        assert theirs.value.detail == nobodys.value.detail.replace(unknown, task_id)
    with pytest.raises(EnvelopeError):
        asyncio.run(manager.query(task_id, "Alice"))  # user ids are taken as given: another user
    assert setup.row(task_id).task_status == TaskStatus.RUNNING  # mallory's stop changed nothing
    assert asyncio.run(manager.query(task_id, "alice")).user_id == "alice"
    assert asyncio.run(manager.stop(task_id, "alice")).task_status == TaskStatus.STOPPED


def test_the_builtin_training_is_readable_by_all_and_stoppable_by_none(setup: Setup) -> None:
    manager = setup.manager()
    manager.ensure_builtin()
    for user_id in ("mallory", "system"):
        state = asyncio.run(manager.query("train-imgseg-default", user_id))
        assert (state.task_id, state.user_id, state.task_status) == (DEFAULT_MODEL_ID, "system", 300)
        with pytest.raises(EnvelopeError) as raised:
            asyncio.run(manager.stop(DEFAULT_MODEL_ID, user_id))
        assert (raised.value.err, raised.value.http_status) == (Err.INVALID_PARAMETER, 403)
    with pytest.raises(EnvelopeError) as raised:  # the running built-in is named: it is no secret
        asyncio.run(manager.start("mallory", "train", **TINY))
    assert raised.value.err == Err.TRAINING_RUNNING and DEFAULT_MODEL_ID in raised.value.detail
    assert setup.row(DEFAULT_MODEL_ID).task_status == TaskStatus.RUNNING


def test_task_ids_are_found_in_any_letter_case(setup: Setup) -> None:
    manager = setup.manager()
    task_id = asyncio.run(manager.start(OWNER, "train", **TINY)).task_id
    spelled = " " + task_id.replace("imgSeg", "imgseg") + " "  # the document's spelling, a stray space
    assert asyncio.run(manager.query(spelled, OWNER)).task_id == task_id


def test_the_spec_snapshots_the_users_resources(setup: Setup) -> None:
    mine = setup.add_resource(OWNER, "a", "Button", (200, 0, 0))
    setup.add_resource("someone_else", "b", "Input", (0, 200, 0))
    manager = setup.manager()
    task_id = asyncio.run(manager.start(OWNER, "train", **TINY)).task_id
    spec = json.loads((setup.files.training_dir(task_id) / SPEC_FILE).read_text())
    assert spec["rendered_per_class"] == 4 and spec["heldout_per_class"] == 0 and spec["threads"] == 1
    [resource] = spec["resources"]
    assert resource["label"] == "Button"
    copy = Path(resource["path"])
    assert copy.is_relative_to(setup.files.training_dir(task_id))
    setup.files.resource_file(mine).unlink()  # a replaced resource: the training keeps its own copy
    assert copy.read_bytes().startswith(b"\x89PNG")


def test_stopping_a_training_that_has_not_started(setup: Setup) -> None:
    manager = setup.manager()
    task_id = asyncio.run(manager.start(OWNER, "train", **TINY)).task_id
    assert asyncio.run(manager.stop(task_id, OWNER)).task_status == TaskStatus.STOPPED
    assert asyncio.run(manager.stop(task_id, OWNER)).task_status == TaskStatus.STOPPED  # unchanged
    second = asyncio.run(manager.start(OWNER, "train", **TINY))  # a stopped training no longer blocks
    asyncio.run(manager.stop(second.task_id, OWNER))
    run_with(manager, lambda: asyncio.sleep(0.3))  # the runner never launches a stopped training
    for stopped in (task_id, second.task_id):
        assert setup.row(stopped).attempts == 0
        assert not setup.files.training_dir(stopped).joinpath("worker.log").exists()


def test_a_training_interrupted_too_often_fails(setup: Setup) -> None:
    manager = setup.manager(max_attempts=2)
    task_id = asyncio.run(manager.start(OWNER, "train", **TINY)).task_id
    setup.update(task_id, attempts=2)
    state = run_with(manager, lambda: wait_for_state(manager, task_id, finished))
    assert (state.task_status, state.detail) == (TaskStatus.FAILED, "interrupted 2 times")


def test_resolve_model(setup: Setup) -> None:
    manager = setup.manager()
    manager.ensure_builtin()
    with pytest.raises(EnvelopeError) as raised:
        manager.resolve_model("")
    assert raised.value.err == Err.MODEL_ID_ERROR and "still training" in raised.value.detail
    setup.update(DEFAULT_MODEL_ID, task_status=200, model_ready=1, progress={"labels": ["Bar", "Button"]})
    expected = ClassifierModel(DEFAULT_MODEL_ID, ["Bar", "Button"])
    assert manager.resolve_model("") == expected
    assert manager.resolve_model("train-imgseg-DEFAULT") == expected  # the stored spelling is Triton's name

    with pytest.raises(EnvelopeError) as raised:
        manager.resolve_model("Train-imgSeg-3e8e29da-6e42-4d2d-961c-4e95f562b6ad")
    assert raised.value.err == Err.MODEL_ID_ERROR and "does not exist" in raised.value.detail

    failed = asyncio.run(manager.start(OWNER, "train", **TINY)).task_id
    setup.update(failed, task_status=400, detail="the training worker exited with code 1: MemoryError")
    with pytest.raises(EnvelopeError) as raised:
        manager.resolve_model(failed)
    assert raised.value.err == Err.MODEL_ID_ERROR and "failed" in raised.value.detail
    assert "MemoryError" in raised.value.detail

    configured = setup.manager(default_model_id=failed)
    with pytest.raises(EnvelopeError) as raised:
        configured.resolve_model("")
    assert failed in raised.value.detail


# -- real trainings (each worker start imports torch: seconds) ----------------------------------------------


@pytest.mark.slow
def test_stopping_a_running_training_keeps_its_best_model(setup: Setup) -> None:
    manager = setup.manager(builtin_epochs=0)
    task_id = asyncio.run(manager.start(OWNER, "train", **{**TINY, "epochs": 200})).task_id

    async def stop_after_an_epoch() -> TrainingState:
        await wait_for_state(manager, task_id, lambda state: len(state.progress["valAccList"]) >= 1)
        return await manager.stop(task_id.lower(), OWNER)

    state = run_with(manager, stop_after_an_epoch)
    assert (state.task_id, state.task_status) == (task_id, TaskStatus.STOPPED)
    assert setup.row(task_id).attempts == 1
    assert state.model_ready and setup.ready_models == [task_id]
    assert state.progress["epoch"] < 200 and state.progress["modelEpoch"] >= 1
    assert state.progress["dataset_num"] == 10 * 4  # rendered only: the user added no resources
    assert_in_repository(setup, task_id, state.progress["labels"])
    assert manager.resolve_model(task_id).model_id == task_id


@pytest.mark.slow
def test_a_failing_worker_fails_the_training_with_its_reason(setup: Setup) -> None:
    manager = setup.manager()
    task_id = asyncio.run(manager.start(OWNER, "train", **TINY)).task_id
    spec_file = setup.files.training_dir(task_id) / SPEC_FILE
    spec_file.write_text(json.dumps({**json.loads(spec_file.read_text()), "rendered_per_class": 0}))  # no data
    state = run_with(manager, lambda: wait_for_state(manager, task_id, finished))
    assert state.task_status == TaskStatus.FAILED and not state.model_ready
    assert state.detail is not None and state.detail.startswith("the training worker exited with code 1: ")
    assert "at least 2 component types" in state.detail  # the worker's own reason, from its log
    with pytest.raises(EnvelopeError) as raised:
        manager.resolve_model(task_id)
    assert "failed" in raised.value.detail


@pytest.mark.slow
def test_a_training_survives_a_shut_down_and_a_crash_and_produces_a_usable_model(setup: Setup) -> None:
    setup.add_resource(OWNER, "red_button", "Button", (200, 30, 30))
    setup.add_resource(OWNER, "grey_input", "Input", (230, 230, 230))
    first = setup.manager()
    task_id = asyncio.run(first.start(OWNER, "train", **{**TINY, "epochs": 2})).task_id
    # run_with shuts the manager down once the first epoch has been validated: the worker is stopped ...
    run_with(first, lambda: wait_for_state(first, task_id, lambda state: len(state.progress["valAccList"]) >= 1))
    paused = setup.row(task_id)  # ... and the training waits for the next start, its attempt given back
    assert (paused.task_status, paused.attempts, paused.model_ready) == (TaskStatus.RUNNING, 0, 0)

    second = setup.manager()

    async def crash() -> int:
        runner = asyncio.create_task(second.run())
        async with asyncio.timeout(TRAINING_DEADLINE_S):
            while second._running is None:  # the test needs the worker's pid
                await asyncio.sleep(0.01)
        pid = second._running.process.pid
        runner.cancel()  # the service dies without shutting down ...
        await asyncio.gather(runner, return_exceptions=True)
        return pid

    pid = asyncio.run(crash())
    with pytest.raises(ProcessLookupError):  # ... and its worker with it
        os.kill(pid, 0)
    interrupted = setup.row(task_id)
    assert (interrupted.task_status, interrupted.attempts, interrupted.model_ready) == (TaskStatus.RUNNING, 1, 0)
    assert setup.ready_models == []

    third = setup.manager()
    state = run_with(third, lambda: wait_for_state(third, task_id, finished))
    assert state.task_status == TaskStatus.DONE, state.detail
    assert state.model_ready and setup.ready_models == [task_id]
    assert setup.row(task_id).attempts == 2 and setup.row(task_id).finished_at is not None
    progress = state.progress
    assert progress["epoch"] == 2 and 1 <= progress["modelEpoch"] <= 2
    assert len(progress["valAccList"]) == len(progress["valLossList"]) == 2  # the first epoch's were kept
    assert progress["dataset_num"] == 10 * 4 + 2  # rendered images of the ten types, and the two resources
    assert len(progress["labels"]) == 10 and progress["labels"] == sorted(progress["labels"])
    assert len(progress["singleAcc"]) == 10
    assert 0.0 <= progress["acc"] <= 1.0 and progress["loss"] > 0
    assert_in_repository(setup, task_id, progress["labels"])
    assert third.resolve_model(task_id) == ClassifierModel(task_id, progress["labels"])
