"""Index compartments by (comp_type, comp_id, rid) for keyset paging of Patient/$everything.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 0001 creates the schema from today's metadata, which already has this index on a fresh database.
    op.create_index("ix_compartments_owner_rid", "compartments", ["comp_type", "comp_id", "rid"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_compartments_owner_rid", table_name="compartments")
