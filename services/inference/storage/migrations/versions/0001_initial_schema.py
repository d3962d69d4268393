"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-24 17:08:12.018423
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('inference_tasks',
    sa.Column('task_id', sa.String(length=36), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('sample_name', sa.String(length=255), nullable=False),
    sa.Column('model_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('completed_at', sa.DateTime(), nullable=True),
    sa.Column('inference_time', sa.Float(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_inference_tasks'))
    )
    with op.batch_alter_table('inference_tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inference_tasks_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_inference_tasks_status'), ['status'], unique=False)

    op.create_table('export_sessions',
    sa.Column('session_id', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.String(length=64), nullable=False),
    sa.Column('image_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('session_id', name=op.f('pk_export_sessions'))
    )
    with op.batch_alter_table('export_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_sessions_created_at'), ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('export_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_sessions_created_at'))

    op.drop_table('export_sessions')
    with op.batch_alter_table('inference_tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inference_tasks_status'))
        batch_op.drop_index(batch_op.f('ix_inference_tasks_created_at'))

    op.drop_table('inference_tasks')
