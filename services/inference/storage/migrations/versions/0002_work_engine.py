"""work engine: the 002 tasks become work items (inference_tasks -> inference_work_items, rows copied)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 23:15:19.629899
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('inference_work_items',
    sa.Column('item_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=True),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('progress', sa.JSON(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('errors', sa.JSON(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
    sa.Column('stop_requested', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('item_id', name=op.f('pk_inference_work_items'))
    )
    with op.batch_alter_table('inference_work_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inference_work_items_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_inference_work_items_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_inference_work_items_lease_expires_at'), ['lease_expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_inference_work_items_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_inference_work_items_status'), ['status'], unique=False)

    _copy_tasks()
    with op.batch_alter_table('inference_tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inference_tasks_created_at'))
        batch_op.drop_index(batch_op.f('ix_inference_tasks_status'))

    op.drop_table('inference_tasks')


# The tables as this revision knows them (never the application's models, which move on).
_tasks = sa.table(
    'inference_tasks',
    *(sa.column(name) for name in ('task_id', 'index', 'sample_name', 'model_id', 'status', 'attempts',
                                   'created_at', 'started_at', 'completed_at', 'inference_time', 'error_message')),
)
_items = sa.table(
    'inference_work_items',
    sa.column('item_id'), sa.column('kind'), sa.column('status'), sa.column('owner'),
    sa.column('spec', sa.JSON), sa.column('progress', sa.JSON), sa.column('result', sa.JSON), sa.column('error'),
    sa.column('errors', sa.JSON), sa.column('attempts'), sa.column('max_attempts'), sa.column('priority'),
    sa.column('stop_requested'), sa.column('created_at'), sa.column('started_at'), sa.column('finished_at'),
)
# A task cut off by the old service (processing) waits again, as the old start-up recovery did.
_STATUS = {'pending': 'queued', 'processing': 'queued', 'completed': 'completed', 'failed': 'failed'}


def _copy_tasks() -> None:
    connection = op.get_bind()
    rows = [
        {
            'item_id': task.task_id,
            'kind': 'inference_task',
            'status': _STATUS[task.status],
            'owner': None,
            'spec': {'index': task.index, 'sample_name': task.sample_name, 'model_id': task.model_id},
            'progress': {},
            'result': {} if task.inference_time is None else {'inference_time': task.inference_time},
            'error': task.error_message,
            'errors': [] if task.error_message is None else [task.error_message],
            'attempts': task.attempts,
            # VM_INFERENCE_TASK_MAX_ATTEMPTS' default; a waiting task keeps at least one more run.
            'max_attempts': max(2, task.attempts + 1) if task.status in ('pending', 'processing') else 2,
            'priority': 0,
            'stop_requested': False,
            'created_at': task.created_at,
            'started_at': task.started_at,
            'finished_at': task.completed_at,
        }
        for task in connection.execute(sa.select(_tasks))
    ]
    if rows:
        connection.execute(sa.insert(_items), rows)


def downgrade() -> None:
    # The tasks table comes back empty: work items are not copied back.
    op.create_table('inference_tasks',
    sa.Column('task_id', sa.VARCHAR(length=36), nullable=False),
    sa.Column('index', sa.INTEGER(), nullable=False),
    sa.Column('sample_name', sa.VARCHAR(length=255), nullable=False),
    sa.Column('model_id', sa.VARCHAR(length=64), nullable=False),
    sa.Column('status', sa.VARCHAR(length=16), nullable=False),
    sa.Column('attempts', sa.INTEGER(), nullable=False),
    sa.Column('created_at', sa.DATETIME(), nullable=False),
    sa.Column('started_at', sa.DATETIME(), nullable=True),
    sa.Column('completed_at', sa.DATETIME(), nullable=True),
    sa.Column('inference_time', sa.FLOAT(), nullable=True),
    sa.Column('error_message', sa.TEXT(), nullable=True),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_inference_tasks'))
    )
    with op.batch_alter_table('inference_tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inference_tasks_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_inference_tasks_created_at'), ['created_at'], unique=False)

    with op.batch_alter_table('inference_work_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inference_work_items_status'))
        batch_op.drop_index(batch_op.f('ix_inference_work_items_owner'))
        batch_op.drop_index(batch_op.f('ix_inference_work_items_lease_expires_at'))
        batch_op.drop_index(batch_op.f('ix_inference_work_items_kind'))
        batch_op.drop_index(batch_op.f('ix_inference_work_items_created_at'))

    op.drop_table('inference_work_items')
