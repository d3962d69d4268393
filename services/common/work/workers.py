"""The workers of one replica: they claim items of their kinds, run each kind's handler, keep the item's lease
alive while it runs, and record the outcome. One rescue loop per replica returns the items of dead replicas to
the queue (or marks them interrupted).

A handler is `async def handle(item, context) -> result dict`. Returning completes the item with that result;
raising Stopped stops it; raising Retry gives it back to the queue (while attempts remain); any other exception
fails it (a ServiceError with its own words, anything else only by its type: its text may name server paths).
A stop asked for through the queue (by any replica) sets `context.stop_requested`; kinds whose handler does not
watch it are cancelled instead. When the replica shuts down, running items are queued again at once (kinds that
wait for an explicit resume are marked interrupted), so a restart need not wait for their leases to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from services.common.errors import ServiceError
from services.common.work.items import WorkItem, WorkStatus
from services.common.work.queue import WorkQueue

log = structlog.get_logger("work")

DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_POLL_SECONDS = 1.0
# After an error outside the handlers (the database unreachable), before a worker tries again.
_RETRY_SECONDS = 1.0
_CUT_OFF = "the service stopped while it ran"


class Stopped(Exception):
    """Raised by a handler that stopped as asked; its result (what was done so far) is kept."""

    def __init__(self, result: dict[str, Any] | None = None) -> None:
        super().__init__("stopped")
        self.result = result or {}


class Failed(Exception):
    """Raised by a handler to fail its item with a reason of its own and a result (e.g. a document's error
    code), where the default description of an exception would not do."""

    def __init__(self, reason: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result or {}


class Retry(Exception):
    """Raised by a handler whose attempt could not finish for a passing reason: the item is queued again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WorkContext:
    """What a running handler may do besides returning: report progress, and see a stop request."""

    def __init__(self, queue: WorkQueue, item: WorkItem) -> None:
        self._queue = queue
        self.item = item
        self.stop_requested = asyncio.Event()

    async def report(self, progress: dict[str, Any]) -> None:
        """Record progress (merged into what was reported before); readers see it at once."""
        await asyncio.to_thread(self._queue.report, self.item.item_id, progress)


Handler = Callable[[WorkItem, WorkContext], Awaitable[dict[str, Any] | None]]


def describe_failure(error: BaseException) -> str:
    """A failed item's error for its client: a domain error's words; anything else only by its type."""
    if isinstance(error, ServiceError):
        return error.detail
    return f"internal error ({type(error).__name__}); the service log has the details"


@dataclass(frozen=True)
class WorkKind:
    name: str
    handler: Handler
    workers: int = 1  # items of this kind this replica runs at once
    # Whether the handler watches context.stop_requested (e.g. to stop a worker process gracefully); if not,
    # a stop request cancels it.
    handles_stop: bool = False
    # Whether an item whose run was cut off (lease lost, replica stopped) waits for an explicit resume
    # (interrupted) instead of being queued again.
    interrupt_when_cut_off: bool = False
    describe: Callable[[BaseException], str] = describe_failure


@dataclass
class _Running:
    task: asyncio.Task[dict[str, Any] | None]
    context: WorkContext
    lease_lost: bool = False


class WorkerPool:
    def __init__(
        self,
        queue: WorkQueue,
        kinds: list[WorkKind],
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        self._queue = queue
        self._kinds = {kind.name: kind for kind in kinds}
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._wake = {kind.name: asyncio.Event() for kind in kinds}
        self._running: dict[str, _Running] = {}
        self._ended: dict[str, asyncio.Event] = {}  # items someone waits for, set when they end here
        self.started = False

    @property
    def queue(self) -> WorkQueue:
        return self._queue

    def notify(self, kind: str) -> None:
        """An item of `kind` was submitted here: a worker looks now instead of at its next poll."""
        self._wake[kind].set()

    def is_running_here(self, item_id: str) -> bool:
        return item_id in self._running

    async def stop(self, item_id: str) -> WorkItem:
        """Stop an item (queue.stop); one running in this replica is told at once, not at its next heartbeat."""
        item = await asyncio.to_thread(self._queue.stop, item_id)
        running = self._running.get(item_id)
        if running is not None:
            self._ask_to_stop(running)
        return item

    async def wait_finished(self, item_id: str, seconds: float) -> WorkItem | None:
        """The item once it has finished, or as it is after `seconds`; None for an unknown item. An item that
        ends in this replica is seen at once; one that runs elsewhere, at the next look (every poll interval)."""
        deadline = asyncio.get_running_loop().time() + seconds
        event = self._ended.setdefault(item_id, asyncio.Event())
        try:
            while True:
                item = await asyncio.to_thread(self._queue.find, item_id)
                remaining = deadline - asyncio.get_running_loop().time()
                if item is None or item.finished or remaining <= 0:
                    return item
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, self._poll))
        finally:
            self._ended.pop(item_id, None)

    # -- running ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Every kind's workers and the rescue loop, until cancelled (service shut-down)."""
        await asyncio.to_thread(self.rescue)  # from before a restart
        self.started = True
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._rescue_loop(), name="work-rescue")
                for kind in self._kinds.values():
                    for number in range(1, kind.workers + 1):
                        group.create_task(self._work(kind), name=f"work-{kind.name}-{number}")
        finally:
            self.started = False

    def rescue(self) -> list[WorkItem]:
        """The items of this pool's kinds whose replica is gone, queued again (or interrupted, or failed once
        their attempts are spent). run() does it at its start and then every lease/3 seconds; a service's
        start-up clean-up may do it first, to know which running items are really running."""
        interrupt_kinds = {kind.name for kind in self._kinds.values() if kind.interrupt_when_cut_off}
        rescued = self._queue.rescue(self._kinds, interrupt_kinds, _CUT_OFF)
        for item in rescued:
            log.warning("work item of a lost replica rescued", item_id=item.item_id, status=item.status)
        return rescued

    async def _rescue_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await asyncio.to_thread(self.rescue)
            except Exception:  # the database may be away for a while; try again later
                log.exception("rescue of lost work items failed")

    async def _work(self, kind: WorkKind) -> None:
        wake = self._wake[kind.name]
        while True:
            try:
                item = await self._claim(kind)
            except Exception:
                log.exception("claiming work failed; retrying", kind=kind.name)
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            if item is None:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._poll)
                continue
            await self._run(kind, item)

    async def _claim(self, kind: WorkKind) -> WorkItem | None:
        # A claim that completes while the replica is being stopped must not stay leased to it until the
        # lease expires: it is handed back at once.
        claim = asyncio.ensure_future(asyncio.to_thread(self._queue.claim, [kind.name], self._lease))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            item = await claim
            if item is not None:
                self._queue.release(item.item_id)
            raise

    async def _run(self, kind: WorkKind, item: WorkItem) -> None:
        with structlog.contextvars.bound_contextvars(item_id=item.item_id, kind=kind.name):
            context = WorkContext(self._queue, item)
            running = _Running(asyncio.create_task(kind.handler(item, context)), context)
            self._running[item.item_id] = running
            heartbeat = asyncio.create_task(self._heartbeat(kind, running))
            log.info("work item started", attempt=item.attempts)
            try:
                outcome = await self._outcome(kind, running)
            except asyncio.CancelledError:
                # The replica is stopping: the handler ends first (a worker process is stopped), then the item is
                # handed back.
                running.task.cancel()
                with contextlib.suppress(BaseException):
                    await running.task
                if not running.lease_lost:
                    self._cut_off(kind, item)
                raise
            finally:
                heartbeat.cancel()
                self._running.pop(item.item_id, None)
            if outcome is not None:
                status, fields = outcome
                recorded = await asyncio.to_thread(self._queue.finish, item.item_id, status, **fields)
                if recorded is None:
                    log.warning("work item outcome not recorded: its lease was lost", status=status)
                else:
                    log.info("work item finished", status=status, error=fields.get("error"))
            if (ended := self._ended.get(item.item_id)) is not None:
                ended.set()

    async def _outcome(self, kind: WorkKind, running: _Running) -> tuple[WorkStatus, dict[str, Any]] | None:
        """How the handler's run ended; None when nothing is to be recorded (lease lost, or queued again)."""
        outcome: tuple[WorkStatus, dict[str, Any]] | None = None
        try:
            outcome = WorkStatus.COMPLETED, {"result": await running.task or {}}
        except Stopped as stopped:
            outcome = WorkStatus.STOPPED, {"result": stopped.result}
        except Failed as failed:
            log.warning("work item failed", error=failed.reason)
            outcome = WorkStatus.FAILED, {"error": failed.reason, "result": failed.result}
        except Retry as retry:
            await asyncio.to_thread(self._queue.retry_later, running.context.item.item_id, retry.reason)
            log.warning("work item queued again", reason=retry.reason)
        except asyncio.CancelledError:
            if running.lease_lost:
                log.warning("work item abandoned: another replica holds its lease now")
            elif running.context.stop_requested.is_set() and not asyncio.current_task().cancelling():
                outcome = WorkStatus.STOPPED, {}
            else:
                raise
        except Exception as error:
            if isinstance(error, ServiceError):
                log.warning("work item failed", error=error.detail)
            else:
                log.exception("work item failed")
            outcome = WorkStatus.FAILED, {"error": kind.describe(error)}
        return outcome

    def _cut_off(self, kind: WorkKind, item: WorkItem) -> None:
        """This replica stops while the item runs: hand it back now (synchronously: the caller is being
        cancelled) rather than let its lease expire."""
        try:
            if kind.interrupt_when_cut_off:
                self._queue.finish(item.item_id, WorkStatus.INTERRUPTED, error=None)
            else:
                self._queue.retry_later(item.item_id, _CUT_OFF)
        except Exception:  # its lease will expire and the rescue will find it
            log.exception("could not hand back a cut-off work item")

    def _ask_to_stop(self, running: _Running) -> None:
        running.context.stop_requested.set()
        kind = self._kinds[running.context.item.kind]
        if not kind.handles_stop:
            running.task.cancel()

    async def _heartbeat(self, kind: WorkKind, running: _Running) -> None:
        item_id = running.context.item.item_id
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                renewed = await asyncio.to_thread(self._queue.renew, item_id, self._lease)
            except Exception:  # keep running: the lease holds a while longer, the next beat may get through
                log.exception("renewing a work lease failed")
                continue
            if renewed is None:
                running.lease_lost = True
                running.task.cancel()
                return
            if renewed.stop_requested and not running.context.stop_requested.is_set():
                self._ask_to_stop(running)
