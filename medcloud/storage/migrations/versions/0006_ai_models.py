"""Model registry (issue 7): registered model versions, their package bytes, the active version per
name (medcloud/storage/ai_schema.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ai_models',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('task', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('package_sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('manifest', sa.Text(), nullable=False),
    sa.Column('registered', sa.BigInteger(), nullable=False),
    sa.Column('registered_by', sa.String(length=256), nullable=True),
    sa.PrimaryKeyConstraint('name', 'version')
    )
    op.create_table('ai_model_packages',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('name', 'version')
    )
    op.create_table('ai_active_models',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('activated', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('ai_active_models')
    op.drop_table('ai_model_packages')
    op.drop_table('ai_models')
