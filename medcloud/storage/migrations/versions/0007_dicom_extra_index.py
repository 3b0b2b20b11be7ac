"""Configurable extra QIDO/C-FIND matching keys (issue 5): dicom_extra_index
(medcloud/storage/imaging_schema.py, medcloud/imaging/extra_tags.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dicom_extra_index',
    sa.Column('instance_pk', sa.BigInteger(), nullable=False),
    sa.Column('series_pk', sa.BigInteger(), nullable=False),
    sa.Column('study_pk', sa.BigInteger(), nullable=False),
    sa.Column('tag', sa.String(length=8), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False)
    )
    with op.batch_alter_table('dicom_extra_index', schema=None) as batch_op:
        batch_op.create_index('ix_dicom_extra_instance', ['instance_pk'], unique=False)
        batch_op.create_index('ix_dicom_extra_tag_value', ['tag', 'value'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dicom_extra_index', schema=None) as batch_op:
        batch_op.drop_index('ix_dicom_extra_tag_value')
        batch_op.drop_index('ix_dicom_extra_instance')
    op.drop_table('dicom_extra_index')
