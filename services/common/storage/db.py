"""SQLAlchemy engines (embedded SQLite by default, PostgreSQL by URL) and Alembic migrations."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, MetaData, Select, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from services.common.errors import InvalidArgument

# Constraint names every service's metadata uses, so Alembic migrations name them the same everywhere.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    if parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        # WAL: readers never block the writer; NORMAL sync is durable across process crashes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any error."""
    with factory() as session, session.begin():
        yield session


def database_probe(engine: Engine) -> Callable[[], Awaitable[bool]]:
    """A readiness check for a service's health: can the metadata store answer a query?"""

    def ping() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    async def ready() -> bool:
        try:
            await asyncio.to_thread(ping)
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        return True

    return ready


def paged(query: Select, page: int, page_size: int, max_page_size: int) -> Select:
    """`query` limited to one page (1-based); page_size 0 means every row."""
    if page < 0 or page_size < 0 or page_size > max_page_size:
        raise InvalidArgument(f"page must be >= 1 and page_size between 1 and {max_page_size} (0 = everything)")
    return query.offset((max(page, 1) - 1) * page_size).limit(page_size) if page_size else query


def migrate(engine: Engine, migrations_dir: Path, metadata: MetaData, version_table: str) -> None:
    """Bring the schema to the newest revision in `migrations_dir` (an Alembic script directory)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    with engine.begin() as connection:
        config.attributes.update(connection=connection, metadata=metadata, version_table=version_table)
        command.upgrade(config, "head")
