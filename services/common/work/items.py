"""Work items: the durable rows of the work engine, one table per service (in the service's own database).

One status vocabulary inside the engine; each document's words (002's pending/processing, 004's 300/200/400/500,
000's queued/running/...) are mapped at the edge, by the service that answers.

    queued ──claim──> running ──> completed
      ^                  │  └───> failed        (the handler raised, or the attempts ran out)
      │                  ├──────> stopped       (a stop was asked for)
      └── lease lost ────┘──────> interrupted   (lease lost, for kinds that wait for an explicit resume)
      └──────────── resume ──── stopped | failed | interrupted
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column


class WorkStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"


FINISHED = frozenset({WorkStatus.COMPLETED, WorkStatus.FAILED, WorkStatus.STOPPED, WorkStatus.INTERRUPTED})


class WorkItemColumns:
    """The columns of a service's work table: `class WorkItemRow(WorkItemColumns, Base)` with a
    `__tablename__` of the service's own (services may share one PostgreSQL database)."""

    item_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the ID the API hands out
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)  # the user who submitted it
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # what to do (the kind's own fields)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the kind's last reported progress
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # what it produced
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it failed, for its client
    errors: Mapped[list[str]] = mapped_column(JSON, default=list)  # the reason of every attempt that ended badly
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # counted when claimed
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    priority: Mapped[int] = mapped_column(Integer, default=0)  # lower runs first
    # The replica running it and until when its claim holds; renewed by its heartbeat.
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # of the first attempt
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


@dataclass(frozen=True)
class WorkItem:
    """A snapshot of a work row: callers never hold SQLAlchemy objects."""

    item_id: str
    kind: str
    status: WorkStatus
    owner: str | None
    spec: dict[str, Any]
    progress: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    errors: list[str] = field(default_factory=list)
    attempts: int = 0
    max_attempts: int = 1
    priority: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    stop_requested: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def of(cls, row: WorkItemColumns) -> WorkItem:
        values = {f.name: getattr(row, f.name) for f in fields(cls)}
        values["status"] = WorkStatus(values["status"])
        for name in ("spec", "progress", "result"):
            values[name] = dict(values[name] or {})
        values["errors"] = list(values["errors"] or [])
        return cls(**values)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED
