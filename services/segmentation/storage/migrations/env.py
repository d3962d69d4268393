"""Alembic environment of the segmentation service (invoked by services.common.storage.db.migrate)."""

from services.common.storage.alembic_env import run_migrations

run_migrations()
