"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-24 15:17:26.493098
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('models',
    sa.Column('model_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=True),
    sa.Column('dataset_id', sa.String(length=64), nullable=True),
    sa.Column('classes', sa.JSON(), nullable=False),
    sa.Column('imgsz', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('export_status', sa.String(length=16), nullable=False),
    sa.Column('export_error', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('model_id', name=op.f('pk_models'))
    )
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_models_created_at'), ['created_at'], unique=False)

    op.create_table('training_jobs',
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('dataset_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=16), nullable=False),
    sa.Column('model_name', sa.String(length=255), nullable=False),
    sa.Column('base_model_id', sa.String(length=64), nullable=True),
    sa.Column('epochs', sa.Integer(), nullable=False),
    sa.Column('imgsz', sa.Integer(), nullable=False),
    sa.Column('batch', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('resume', sa.Boolean(), nullable=False),
    sa.Column('epochs_completed', sa.Integer(), nullable=False),
    sa.Column('weights_source', sa.String(length=512), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('model_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('completed_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_training_jobs'))
    )
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_training_jobs_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_training_jobs_status'), ['status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_training_jobs_status'))
        batch_op.drop_index(batch_op.f('ix_training_jobs_created_at'))

    op.drop_table('training_jobs')
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_models_created_at'))

    op.drop_table('models')
