"""work engine: the ingest tasks become work items (ingest_tasks -> segmentation_work_items, rows copied)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 23:40:03.215486
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('segmentation_work_items',
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
    sa.PrimaryKeyConstraint('item_id', name=op.f('pk_segmentation_work_items'))
    )
    with op.batch_alter_table('segmentation_work_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_segmentation_work_items_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_segmentation_work_items_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_segmentation_work_items_lease_expires_at'), ['lease_expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_segmentation_work_items_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_segmentation_work_items_status'), ['status'], unique=False)

    _copy_tasks()
    with op.batch_alter_table('ingest_tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ingest_tasks_created_at'))
        batch_op.drop_index(batch_op.f('ix_ingest_tasks_task_status'))

    op.drop_table('ingest_tasks')


# The tables as this revision knows them (never the application's models, which move on).
_tasks = sa.table(
    'ingest_tasks',
    *(sa.column(name) for name in ('task_id', 'user_id', 'task_status', 'upload_name', 'image_url', 'segmenter',
                                   'attempts', 'created_at', 'finished_at', 'err', 'detail')),
)
_items = sa.table(
    'segmentation_work_items',
    sa.column('item_id'), sa.column('kind'), sa.column('status'), sa.column('owner'),
    sa.column('spec', sa.JSON), sa.column('progress', sa.JSON), sa.column('result', sa.JSON), sa.column('error'),
    sa.column('errors', sa.JSON), sa.column('attempts'), sa.column('max_attempts'), sa.column('priority'),
    sa.column('stop_requested'), sa.column('created_at'), sa.column('started_at'), sa.column('finished_at'),
)
_MAX_ATTEMPTS = 2  # VM_SEGMENTATION_INGEST_MAX_ATTEMPTS' default


def _item(task) -> dict:
    status, error, result = {200: 'completed', 400: 'failed'}.get(task.task_status, 'queued'), task.detail, {}
    if task.task_status == 400:
        result = {'err': task.err}
    elif status == 'queued' and task.attempts >= _MAX_ATTEMPTS:  # the old service would not run it again
        status, error, result = 'failed', f'interrupted {task.attempts} times (the service stopped while it ran)', {'err': 808}
    return {
        'item_id': task.task_id,
        'kind': 'ingest',
        'status': status,
        'owner': task.user_id,
        'spec': {'upload_name': task.upload_name, 'image_url': task.image_url, 'segmenter': task.segmenter},
        'progress': {},
        'result': result,
        'error': error,
        'errors': [] if error is None else [error],
        'attempts': task.attempts,
        'max_attempts': _MAX_ATTEMPTS,
        'priority': 0,
        'stop_requested': False,
        'created_at': task.created_at,
        'started_at': task.created_at if task.attempts else None,
        'finished_at': None if status == 'queued' else task.finished_at or task.created_at,
    }


def _copy_tasks() -> None:
    connection = op.get_bind()
    rows = [_item(task) for task in connection.execute(sa.select(_tasks))]
    if rows:
        connection.execute(sa.insert(_items), rows)


def downgrade() -> None:
    # The ingest tasks table comes back empty: work items are not copied back.
    op.create_table('ingest_tasks',
    sa.Column('task_id', sa.VARCHAR(length=64), nullable=False),
    sa.Column('user_id', sa.VARCHAR(length=128), nullable=False),
    sa.Column('task_status', sa.INTEGER(), nullable=False),
    sa.Column('upload_name', sa.VARCHAR(length=255), nullable=True),
    sa.Column('image_url', sa.TEXT(), nullable=True),
    sa.Column('segmenter', sa.VARCHAR(length=32), nullable=False),
    sa.Column('attempts', sa.INTEGER(), nullable=False),
    sa.Column('created_at', sa.DATETIME(), nullable=False),
    sa.Column('finished_at', sa.DATETIME(), nullable=True),
    sa.Column('err', sa.INTEGER(), nullable=True),
    sa.Column('detail', sa.TEXT(), nullable=True),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_ingest_tasks'))
    )
    with op.batch_alter_table('ingest_tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ingest_tasks_task_status'), ['task_status'], unique=False)
        batch_op.create_index(batch_op.f('ix_ingest_tasks_created_at'), ['created_at'], unique=False)

    with op.batch_alter_table('segmentation_work_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_segmentation_work_items_status'))
        batch_op.drop_index(batch_op.f('ix_segmentation_work_items_owner'))
        batch_op.drop_index(batch_op.f('ix_segmentation_work_items_lease_expires_at'))
        batch_op.drop_index(batch_op.f('ix_segmentation_work_items_kind'))
        batch_op.drop_index(batch_op.f('ix_segmentation_work_items_created_at'))

    op.drop_table('segmentation_work_items')
