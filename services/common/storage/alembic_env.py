"""The body of every service's migrations/env.py: run migrations on the connection `migrate` passes in."""

from __future__ import annotations

from alembic import context


def run_migrations() -> None:
    attributes = context.config.attributes
    context.configure(
        connection=attributes["connection"],
        target_metadata=attributes["metadata"],
        # One version table per service, so services may share a PostgreSQL database.
        version_table=attributes["version_table"],
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode recreates tables instead
    )
    with context.begin_transaction():
        context.run_migrations()
