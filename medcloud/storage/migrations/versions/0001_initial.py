"""Initial schema: resources, history, search indexes, compartments, jobs, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

from medcloud.storage.schema import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The first revision creates the schema as defined today; later revisions are explicit ops.
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
