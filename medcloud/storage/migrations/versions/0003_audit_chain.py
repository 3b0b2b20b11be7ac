"""Audit hash chain (issue 4): chain and search columns on audit_log, the audit_head table.

Entries written before this revision are chained once, in ``seq`` order, and renumbered 1..n
(the chain appender assigns gap-free ``seq`` from now on); their search columns are filled from
the stored AuditEvent JSON.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_NEW: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ('subtype', sa.String(length=32)),
    ('who', sa.String(length=256)),
    ('client_id', sa.String(length=256)),
    ('patient', sa.String(length=64)),
    ('entity_type', sa.String(length=64)),
    ('entity_id', sa.String(length=256)),
    ('address', sa.String(length=64)),
    ('prev_hash', sa.LargeBinary(length=32)),
    ('hash', sa.LargeBinary(length=32)),
)
_INDEXES = (
    ('ix_audit_log_address', ['address']),
    ('ix_audit_log_client', ['client_id']),
    ('ix_audit_log_entity', ['entity_id', 'entity_type']),
    ('ix_audit_log_hash', ['hash']),
    ('ix_audit_log_patient', ['patient']),
    ('ix_audit_log_recorded', ['recorded']),
    ('ix_audit_log_who', ['who']),
)


def upgrade() -> None:
    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        for name, type_ in _NEW:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    _chain_existing()
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        for name in ('subtype', 'prev_hash', 'hash'):
            batch_op.alter_column(name, existing_type=dict(_NEW)[name], nullable=False)
        for name, cols in _INDEXES:
            batch_op.create_index(name, cols, unique=False)


def _chain_existing() -> None:
    """Chain the rows already there, oldest first, one page at a time."""
    import orjson

    from medcloud.security.audit_chain import GENESIS, Entry, link
    from medcloud.security.audit_store import search_columns

    conn = op.get_bind()
    log = sa.table('audit_log', sa.column('seq', sa.BigInteger), sa.column('recorded', sa.BigInteger),
                   sa.column('content', sa.LargeBinary), sa.column('action', sa.String),
                   sa.column('outcome', sa.String), *(sa.column(n, t) for n, t in _NEW))
    head = sa.table('audit_head', sa.column('id', sa.Integer), sa.column('seq', sa.BigInteger),
                    sa.column('hash', sa.LargeBinary))
    # New seq <= old seq and rows are updated in ascending order: no primary-key collision.
    filled = ('action', 'outcome', *(n for n, _ in _NEW))  # old action/outcome held interaction/HTTP status
    renumber = sa.update(log).where(log.c.seq == sa.bindparam('old_seq')).values(
        seq=sa.bindparam('new_seq'), **{n: sa.bindparam(f'v_{n}') for n in filled})
    seq, prev, after = 0, GENESIS, 0
    while True:
        rows = conn.execute(sa.select(log.c.seq, log.c.recorded, log.c.content).where(log.c.seq > after)
                            .order_by(log.c.seq).limit(1000)).all()
        params = []
        for old_seq, recorded, content in rows:
            seq += 1
            content = bytes(content)
            h = link(prev, Entry(seq, recorded, content))
            values = {**search_columns(orjson.loads(content)), 'prev_hash': prev, 'hash': h}
            params.append({'old_seq': old_seq, 'new_seq': seq, **{f'v_{n}': values[n] for n in filled}})
            prev = h
        if not rows:
            break
        conn.execute(renumber, params)
        after = rows[-1][0]
    conn.execute(sa.insert(head).values(id=1, seq=seq, hash=prev))


def downgrade() -> None:
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        for name, _ in _INDEXES:
            batch_op.drop_index(name)
        for name, _ in reversed(_NEW):
            batch_op.drop_column(name)
    op.drop_table('audit_head')
