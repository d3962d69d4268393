"""The work queue: every change of a work item is one short transaction on its row, so that several replicas of
a service can share one table (one PostgreSQL database) and a committed row is always the truth.

- A claim takes the oldest queued item of the asked kinds (priority first) and marks it running, counting the
  attempt and leasing it to this replica until `lease_expires_at`. On PostgreSQL the candidate row is locked
  with FOR UPDATE SKIP LOCKED, so concurrent claimers pass each other; everywhere the update is
  compare-and-set (`WHERE status = 'queued'`), so an item is never claimed twice (SQLite serialises writers).
- Every later change by the runner is conditional on the lease still being this replica's: once a lease has
  expired and another replica took the item over, the old runner's writes change nothing.
- A lease that is not renewed (its replica died) is rescued: the item is queued again while attempts remain,
  else failed; kinds that wait for an explicit resume are marked interrupted instead.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
import zlib
from collections.abc import Collection
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.common.clock import utcnow_precise
from services.common.errors import Conflict, NotFound, Unavailable
from services.common.processes import ended_here
from services.common.storage.db import paged, transaction
from services.common.work.items import FINISHED, WorkItem, WorkItemColumns, WorkStatus

MAX_PAGE_SIZE = 1000
_CLAIM_TRIES = 5  # candidates lost to another claimer before giving up until the next poll


class QueueFull(Unavailable):
    """A bounded queue is full: the client may retry later."""


@functools.cache
def replica_name() -> str:
    """This process as a lease owner: host, PID and a nonce (a PID is reused across restarts). One per process:
    every queue of the process leases under it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _on_this_host_and_gone(lease_owner: str | None, replica: str) -> bool:
    """A lease of a process of this host that is no longer running: rescued at once, not at its expiry."""
    if not lease_owner or lease_owner == replica:
        return False
    host, _, rest = lease_owner.partition(":")
    pid = rest.partition(":")[0]
    if not pid.isdigit():
        return False
    # A PID equal to this process's own is of a process that ended, whose PID this one has now.
    return (host == socket.gethostname() and int(pid) == os.getpid()) or ended_here(host, int(pid))


class WorkQueue:
    def __init__(self, db: sessionmaker[Session], row_type: type[WorkItemColumns], replica: str | None = None) -> None:
        self._db = db
        self._row = row_type
        self.replica = replica or replica_name()
        self._postgres = db.kw["bind"].dialect.name == "postgresql"

    # -- submitting and reading ------------------------------------------------------------------------------

    def submit(
        self,
        item_id: str,
        kind: str,
        spec: dict[str, Any],
        *,
        owner: str | None = None,
        max_attempts: int = 1,
        priority: int = 0,
        capacity: int = 0,
        full_message: str = "The work queue is full ({waiting} waiting); retry later",
    ) -> WorkItem:
        """A new queued item. With `capacity`, QueueFull (its text: `full_message` with `{waiting}` filled in)
        once that many items of the kind are waiting."""
        with transaction(self._db) as session:
            if capacity:
                self._serialize_submits(session, kind)
                if (waiting := self._count(session, [kind], WorkStatus.QUEUED)) >= capacity:
                    raise QueueFull(full_message.format(waiting=waiting))
            row = self._row(
                item_id=item_id,
                kind=kind,
                status=WorkStatus.QUEUED,
                owner=owner,
                spec=spec,
                progress={},
                result={},
                errors=[],
                attempts=0,
                max_attempts=max_attempts,
                priority=priority,
                stop_requested=False,
                created_at=utcnow_precise(),  # items submitted within one second stay in order
            )
            session.add(row)
            session.flush()
            return WorkItem.of(row)

    def _serialize_submits(self, session: Session, kind: str) -> None:
        """Counting the waiting items and adding one must be one step for every submitter, in every replica:
        a transaction-scoped advisory lock on PostgreSQL; on SQLite, the database's write lock, which any write
        takes (this one changes nothing)."""
        if self._postgres:
            key = zlib.crc32(f"{self._row.__tablename__}:{kind}".encode()) - 2**31  # a signed 32-bit key
            session.execute(select(func.pg_advisory_xact_lock(key)))
        else:
            session.execute(update(self._row).where(self._row.item_id == "").values(kind=self._row.kind))

    def find(self, item_id: str) -> WorkItem | None:
        with self._db() as session:
            row = session.get(self._row, item_id)
            return None if row is None else WorkItem.of(row)

    def get(self, item_id: str, kind: str | None = None) -> WorkItem:
        """NotFound for an unknown item (or one of another kind)."""
        item = self.find(item_id)
        if item is None or (kind is not None and item.kind != kind):
            raise NotFound(f"{item_id} not found")
        return item

    def list(
        self,
        kinds: Collection[str],
        *,
        statuses: Collection[str] = (),
        owner: str | None = None,
        page: int = 1,
        page_size: int = 0,
    ) -> tuple[list[WorkItem], int]:
        """Items of the kinds, newest first, one page of them (page_size 0 = all), and how many match in all."""
        row = self._row
        query = select(row).where(row.kind.in_(kinds))
        if statuses:
            query = query.where(row.status.in_(statuses))
        if owner is not None:
            query = query.where(row.owner == owner)
        count = select(func.count()).select_from(query.subquery())
        query = query.order_by(row.created_at.desc(), row.item_id.desc())
        with self._db() as session:
            total = session.scalar(count) or 0
            items = [WorkItem.of(found) for found in session.scalars(paged(query, page, page_size, MAX_PAGE_SIZE))]
        return items, total

    def count(self, kinds: Collection[str], status: WorkStatus) -> int:
        with self._db() as session:
            return self._count(session, kinds, status)

    def _count(self, session: Session, kinds: Collection[str], status: WorkStatus) -> int:
        row = self._row
        return session.scalar(select(func.count()).where(row.kind.in_(kinds), row.status == status)) or 0

    # -- claiming and running --------------------------------------------------------------------------------

    def claim(self, kinds: Collection[str], lease_seconds: float) -> WorkItem | None:
        """The oldest queued item of the kinds, now running under this replica's lease; None if there is none."""
        row = self._row
        for _ in range(_CLAIM_TRIES):
            with transaction(self._db) as session:
                candidate: Select = (
                    select(row.item_id)
                    .where(row.status == WorkStatus.QUEUED, row.kind.in_(kinds))
                    .order_by(row.priority, row.created_at, row.item_id)
                    .limit(1)
                )
                if self._postgres:
                    candidate = candidate.with_for_update(skip_locked=True)
                item_id = session.scalar(candidate)
                if item_id is None:
                    return None
                now = utcnow_precise()
                claimed = session.execute(
                    update(row)
                    .where(row.item_id == item_id, row.status == WorkStatus.QUEUED)
                    .values(
                        status=WorkStatus.RUNNING,
                        attempts=row.attempts + 1,
                        lease_owner=self.replica,
                        lease_expires_at=now + timedelta(seconds=lease_seconds),
                        started_at=func.coalesce(row.started_at, now),
                    )
                )
                if claimed.rowcount == 1:
                    return WorkItem.of(session.get(row, item_id, populate_existing=True))
        return None

    def _leased(self, session: Session, item_id: str) -> WorkItemColumns | None:
        """The row while this replica still holds its lease (locked on PostgreSQL), else None."""
        query = select(self._row).where(
            self._row.item_id == item_id,
            self._row.status == WorkStatus.RUNNING,
            self._row.lease_owner == self.replica,
        )
        if self._postgres:
            query = query.with_for_update()
        return session.scalars(query).first()

    def renew(self, item_id: str, lease_seconds: float) -> WorkItem | None:
        """Extend this replica's lease; None once it is no longer this replica's (rescued, deleted)."""
        with transaction(self._db) as session:
            found = self._leased(session, item_id)
            if found is None:
                return None
            found.lease_expires_at = utcnow_precise() + timedelta(seconds=lease_seconds)
            return WorkItem.of(found)

    def report(self, item_id: str, progress: dict[str, Any]) -> bool:
        """Record the running item's progress (merged into what it reported before); False if no longer ours."""
        with transaction(self._db) as session:
            found = self._leased(session, item_id)
            if found is None:
                return False
            found.progress = {**(found.progress or {}), **progress}
            return True

    def finish(
        self,
        item_id: str,
        status: WorkStatus,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> WorkItem | None:
        """End this replica's attempt: completed, failed (with the reason), stopped or interrupted. None if the
        lease was lost meanwhile (the outcome then belongs to whoever holds the item now)."""
        assert status in FINISHED, status
        with transaction(self._db) as session:
            found = self._leased(session, item_id)
            if found is None:
                return None
            self._end(found, status, error)
            if result is not None:
                found.result = result
            return WorkItem.of(found)

    def retry_later(self, item_id: str, reason: str) -> WorkItem | None:
        """Give the item back to the queue (an attempt that could not finish, e.g. this replica is stopping); it
        fails instead when its attempts are used up."""
        with transaction(self._db) as session:
            found = self._leased(session, item_id)
            if found is None:
                return None
            self._requeue_or_fail(found, reason)
            return WorkItem.of(found)

    def release(self, item_id: str) -> None:
        """Give back an item claimed but never started (its replica is stopping): the claim did not count."""
        with transaction(self._db) as session:
            found = self._leased(session, item_id)
            if found is not None:
                found.status, found.lease_owner, found.lease_expires_at = WorkStatus.QUEUED, None, None
                found.attempts -= 1

    @staticmethod
    def _end(row: WorkItemColumns, status: WorkStatus, error: str | None) -> None:
        row.status, row.finished_at = status, utcnow_precise()
        row.lease_owner, row.lease_expires_at = None, None
        if error is not None:
            row.error = error
            row.errors = [*(row.errors or []), error]

    def _requeue_or_fail(self, row: WorkItemColumns, reason: str) -> None:
        if row.attempts < row.max_attempts:
            row.status, row.lease_owner, row.lease_expires_at = WorkStatus.QUEUED, None, None
            row.errors = [*(row.errors or []), reason]
        else:
            self._end(row, WorkStatus.FAILED, f"interrupted {row.attempts} times ({reason})")

    # -- control ---------------------------------------------------------------------------------------------

    def stop(self, item_id: str) -> WorkItem:
        """A queued item is stopped at once; a running one is asked to stop (its runner sees it at its next
        heartbeat). A finished one is answered as it is."""
        with transaction(self._db) as session:
            found = session.get(self._row, item_id)
            if found is None:
                raise NotFound(f"{item_id} not found")
            if found.status == WorkStatus.QUEUED:
                self._end(found, WorkStatus.STOPPED, None)
            elif found.status == WorkStatus.RUNNING:
                found.stop_requested = True
            return WorkItem.of(found)

    def resume(self, item_id: str, *, spec: dict[str, Any] | None = None) -> WorkItem:
        """A stopped, failed or interrupted item queued again, with fresh attempts (and, optionally, a changed
        spec); Conflict for one that is queued, running or completed."""
        with transaction(self._db) as session:
            found = session.get(self._row, item_id)
            if found is None:
                raise NotFound(f"{item_id} not found")
            if found.status not in (WorkStatus.STOPPED, WorkStatus.FAILED, WorkStatus.INTERRUPTED):
                raise Conflict(f"{item_id} is {found.status}: only a stopped, failed or interrupted item resumes")
            found.status, found.attempts, found.stop_requested = WorkStatus.QUEUED, 0, False
            found.error, found.finished_at = None, None
            if spec is not None:
                found.spec = spec
            return WorkItem.of(found)

    def update_spec(self, item_id: str, changes: dict[str, Any]) -> WorkItem:
        """Merge `changes` into an item's spec (e.g. what a resumed attempt should continue from)."""
        with transaction(self._db) as session:
            found = session.get(self._row, item_id)
            if found is None:
                raise NotFound(f"{item_id} not found")
            found.spec = {**(found.spec or {}), **changes}
            return WorkItem.of(found)

    def delete(self, item_id: str) -> WorkItem:
        """Remove the row (the caller has stopped the work and removes its files)."""
        with transaction(self._db) as session:
            found = session.get(self._row, item_id)
            if found is None:
                raise NotFound(f"{item_id} not found")
            item = WorkItem.of(found)
            session.delete(found)
            return item

    # -- rescue ----------------------------------------------------------------------------------------------

    def rescue(
        self, kinds: Collection[str], interrupt_kinds: Collection[str] = (), reason: str = "interrupted"
    ) -> list[WorkItem]:
        """Running items of the kinds whose replica is gone: their lease expired, or they were leased by a
        process of this host that has ended. Queued again while attempts remain (else failed); items of
        `interrupt_kinds` are marked interrupted instead (they wait for an explicit resume)."""
        row = self._row
        now = utcnow_precise()
        rescued = []
        with transaction(self._db) as session:
            query = select(row).where(
                row.status == WorkStatus.RUNNING, row.kind.in_(kinds), row.lease_owner != self.replica
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            for found in session.scalars(query):
                expired = found.lease_expires_at is None or found.lease_expires_at < now
                if not (expired or _on_this_host_and_gone(found.lease_owner, self.replica)):
                    continue
                if found.kind in interrupt_kinds:
                    self._end(found, WorkStatus.INTERRUPTED, None)
                    found.errors = [*(found.errors or []), reason]
                else:
                    self._requeue_or_fail(found, reason)
                rescued.append(WorkItem.of(found))
        return rescued
