"""Initial schema: resources, history, search indexes, compartments, jobs, server state, audit.

Generated with alembic autogenerate from medcloud/storage/schema.py, then checked by
tests/storage/test_migrations.py (the migrated schema must equal the metadata on SQLite and
PostgreSQL).

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('recorded', sa.BigInteger(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('outcome', sa.String(length=8), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    op.create_table('compartments',
    sa.Column('rid', sa.BigInteger(), nullable=False),
    sa.Column('comp_type', sa.String(length=64), nullable=False),
    sa.Column('comp_id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False)
    )
    with op.batch_alter_table('compartments', schema=None) as batch_op:
        batch_op.create_index('ix_compartments_owner', ['comp_type', 'comp_id', 'type'], unique=False)
        batch_op.create_index('ix_compartments_owner_rid', ['comp_type', 'comp_id', 'rid'], unique=False)
        batch_op.create_index('ix_compartments_rid', ['rid'], unique=False)

    op.create_table('idx_date',
    sa.Column('rid', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=128), nullable=False),
    sa.Column('grp', sa.SmallInteger(), nullable=False),
    sa.Column('low', sa.BigInteger(), nullable=False),
    sa.Column('high', sa.BigInteger(), nullable=False)
    )
    with op.batch_alter_table('idx_date', schema=None) as batch_op:
        batch_op.create_index('ix_idx_date_high', ['type', 'param', 'high'], unique=False)
        batch_op.create_index('ix_idx_date_low', ['type', 'param', 'low'], unique=False)
        batch_op.create_index('ix_idx_date_rid', ['rid'], unique=False)

    op.create_table('idx_number',
    sa.Column('rid', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=128), nullable=False),
    sa.Column('grp', sa.SmallInteger(), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('low', sa.Float(), nullable=False),
    sa.Column('high', sa.Float(), nullable=False)
    )
    with op.batch_alter_table('idx_number', schema=None) as batch_op:
        batch_op.create_index('ix_idx_number_rid', ['rid'], unique=False)
        batch_op.create_index('ix_idx_number_value', ['type', 'param', 'value'], unique=False)

    op.create_table('idx_quantity',
    sa.Column('rid', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=128), nullable=False),
    sa.Column('grp', sa.SmallInteger(), nullable=False),
    sa.Column('system', sa.Text(), nullable=True),
    sa.Column('code', sa.Text(), nullable=True),
    sa.Column('unit', sa.Text(), nullable=True),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('low', sa.Float(), nullable=False),
    sa.Column('high', sa.Float(), nullable=False)
    )
    with op.batch_alter_table('idx_quantity', schema=None) as batch_op:
        batch_op.create_index('ix_idx_quantity_code_value', ['type', 'param', 'code', 'value'], unique=False)
        batch_op.create_index('ix_idx_quantity_rid', ['rid'], unique=False)

    op.create_table('idx_reference',
    sa.Column('rid', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=128), nullable=False),
    sa.Column('grp', sa.SmallInteger(), nullable=False),
    sa.Column('target_type', sa.String(length=64), nullable=True),
    sa.Column('target_id', sa.String(length=256), nullable=True),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('version', sa.Text(), nullable=True)
    )
    with op.batch_alter_table('idx_reference', schema=None) as batch_op:
        batch_op.create_index('ix_idx_reference_rid', ['rid'], unique=False)
        batch_op.create_index('ix_idx_reference_target_id_target_type', ['type', 'param', 'target_id', 'target_type'], unique=False)
        batch_op.create_index('ix_idx_reference_url', ['type', 'param', 'url'], unique=False)

    op.create_table('idx_string',
    sa.Column('rid', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=128), nullable=False),
    sa.Column('grp', sa.SmallInteger(), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('exact', sa.Text(), nullable=False)
    )
    with op.batch_alter_table('idx_string', schema=None) as batch_op:
        batch_op.create_index('ix_idx_string_exact', ['type', 'param', 'exact'], unique=False)
        batch_op.create_index('ix_idx_string_rid', ['rid'], unique=False)
        batch_op.create_index('ix_idx_string_value', ['type', 'param', 'value'], unique=False)

    op.create_table('idx_token',
    sa.Column('rid', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=128), nullable=False),
    sa.Column('grp', sa.SmallInteger(), nullable=False),
    sa.Column('system', sa.Text(), nullable=True),
    sa.Column('code', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True)
    )
    with op.batch_alter_table('idx_token', schema=None) as batch_op:
        batch_op.create_index('ix_idx_token_code_system', ['type', 'param', 'code', 'system'], unique=False)
        batch_op.create_index('ix_idx_token_rid', ['rid'], unique=False)

    op.create_table('idx_uri',
    sa.Column('rid', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=128), nullable=False),
    sa.Column('grp', sa.SmallInteger(), nullable=False),
    sa.Column('value', sa.Text(), nullable=False)
    )
    with op.batch_alter_table('idx_uri', schema=None) as batch_op:
        batch_op.create_index('ix_idx_uri_rid', ['rid'], unique=False)
        batch_op.create_index('ix_idx_uri_value', ['type', 'param', 'value'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('request', sa.LargeBinary(), nullable=False),
    sa.Column('state', sa.LargeBinary(), nullable=True),
    sa.Column('result', sa.LargeBinary(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('owner', sa.String(length=256), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created', sa.BigInteger(), nullable=False),
    sa.Column('updated', sa.BigInteger(), nullable=False),
    sa.Column('lease_until', sa.BigInteger(), nullable=True),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_status', ['status', 'kind'], unique=False)

    op.create_table('resource_history',
    sa.Column('vid', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('rid', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.BigInteger(), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=True),
    sa.PrimaryKeyConstraint('vid')
    )
    with op.batch_alter_table('resource_history', schema=None) as batch_op:
        batch_op.create_index('ix_history_lu', ['last_updated'], unique=False)
        batch_op.create_index('ix_history_type_id', ['type', 'id', 'version'], unique=False)
        batch_op.create_index('ix_history_type_vid', ['type', 'vid'], unique=False)
        batch_op.create_index('ux_history_rid_version', ['rid', 'version'], unique=True)

    op.create_table('resources',
    sa.Column('rid', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.BigInteger(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('rid')
    )
    with op.batch_alter_table('resources', schema=None) as batch_op:
        batch_op.create_index('ix_resources_type_lu', ['type', 'last_updated'], unique=False)
        batch_op.create_index('ux_resources_type_id', ['type', 'id'], unique=True)

    op.create_table('server_state',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('value', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )


def downgrade() -> None:
    op.drop_table('server_state')
    with op.batch_alter_table('resources', schema=None) as batch_op:
        batch_op.drop_index('ux_resources_type_id')
        batch_op.drop_index('ix_resources_type_lu')

    op.drop_table('resources')
    with op.batch_alter_table('resource_history', schema=None) as batch_op:
        batch_op.drop_index('ux_history_rid_version')
        batch_op.drop_index('ix_history_type_vid')
        batch_op.drop_index('ix_history_type_id')
        batch_op.drop_index('ix_history_lu')

    op.drop_table('resource_history')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status')

    op.drop_table('jobs')
    with op.batch_alter_table('idx_uri', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_uri_value')
        batch_op.drop_index('ix_idx_uri_rid')

    op.drop_table('idx_uri')
    with op.batch_alter_table('idx_token', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_token_rid')
        batch_op.drop_index('ix_idx_token_code_system')

    op.drop_table('idx_token')
    with op.batch_alter_table('idx_string', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_string_value')
        batch_op.drop_index('ix_idx_string_rid')
        batch_op.drop_index('ix_idx_string_exact')

    op.drop_table('idx_string')
    with op.batch_alter_table('idx_reference', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_reference_url')
        batch_op.drop_index('ix_idx_reference_target_id_target_type')
        batch_op.drop_index('ix_idx_reference_rid')

    op.drop_table('idx_reference')
    with op.batch_alter_table('idx_quantity', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_quantity_rid')
        batch_op.drop_index('ix_idx_quantity_code_value')

    op.drop_table('idx_quantity')
    with op.batch_alter_table('idx_number', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_number_value')
        batch_op.drop_index('ix_idx_number_rid')

    op.drop_table('idx_number')
    with op.batch_alter_table('idx_date', schema=None) as batch_op:
        batch_op.drop_index('ix_idx_date_rid')
        batch_op.drop_index('ix_idx_date_low')
        batch_op.drop_index('ix_idx_date_high')

    op.drop_table('idx_date')
    with op.batch_alter_table('compartments', schema=None) as batch_op:
        batch_op.drop_index('ix_compartments_rid')
        batch_op.drop_index('ix_compartments_owner_rid')
        batch_op.drop_index('ix_compartments_owner')

    op.drop_table('compartments')
    op.drop_table('audit_log')
