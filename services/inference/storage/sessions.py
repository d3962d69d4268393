"""Export sessions in the metadata store: the row is committed after the session's directory is in place,
and a directory without a row (a crash in between) is removed at start-up."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from services.common.clock import utcnow
from services.common.storage.db import transaction
from services.common.storage.files import discard_leftover
from services.inference.storage.tables import SessionRow


class SessionStore:
    def __init__(self, db: sessionmaker[Session], root: Path) -> None:
        self._db = db
        self._root = root

    def directory(self, session_id: str) -> Path:
        return self._root / session_id

    def record(self, session_id: str, model_id: str, image_count: int) -> None:
        with transaction(self._db) as session:
            session.add(
                SessionRow(session_id=session_id, model_id=model_id, image_count=image_count, created_at=utcnow())
            )

    def exists(self, session_id: str) -> bool:
        with self._db() as session:
            return session.get(SessionRow, session_id) is not None

    def recover(self) -> None:
        if not self._root.is_dir():
            return
        with self._db() as session:
            known = set(session.scalars(SessionRow.__table__.select().with_only_columns(SessionRow.session_id)))
        for entry in self._root.iterdir():
            if entry.name not in known:
                discard_leftover(entry)
