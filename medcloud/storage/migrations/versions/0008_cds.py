"""CDS Hooks (issue 8): accepted JWT ids (replay protection) and card feedback
(medcloud/storage/cds_schema.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cds_jtis',
    sa.Column('iss', sa.String(length=512), nullable=False),
    sa.Column('jti', sa.String(length=256), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('iss', 'jti')
    )
    op.create_index('ix_cds_jtis_expires', 'cds_jtis', ['expires'])
    op.create_table('cds_feedback',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('service', sa.String(length=64), nullable=False),
    sa.Column('card', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('client', sa.String(length=512), nullable=False),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_cds_feedback_service_card', 'cds_feedback', ['service', 'card'])


def downgrade() -> None:
    op.drop_index('ix_cds_feedback_service_card', 'cds_feedback')
    op.drop_table('cds_feedback')
    op.drop_index('ix_cds_jtis_expires', 'cds_jtis')
    op.drop_table('cds_jtis')
