"""Search indexes that answer a parameter's rid set from the index alone (issue 3, search latency).

Every value index of the ``idx_*`` tables gets ``rid`` as its last column (covering), the date
indexes carry the other bound, the reference target index carries ``url``, and the per-table
``rid`` index becomes ``(rid, param)``; ``resources (type, last_updated)`` gains ``deleted`` (counts).
Why: searches intersect per-parameter rid sets before reading ``resources`` rows
(medcloud/fhir/search/plan.py), which keeps their plans cheap and stable with or without
planner statistics.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# table -> (value indexes before, value indexes after); each is the columns after (type, param).
_VALUE_INDEXES: dict[str, tuple[list[tuple[str, ...]], list[tuple[str, ...]]]] = {
    "idx_string": ([("value",), ("exact",)], [("value",), ("exact",)]),
    "idx_token": ([("code", "system")], [("code", "system")]),
    "idx_date": ([("low",), ("high",)], [("low", "high"), ("high", "low")]),
    "idx_number": ([("value",)], [("value",)]),
    "idx_quantity": ([("code", "value")], [("code", "value")]),
    "idx_reference": ([("target_id", "target_type"), ("url",)], [("target_id", "target_type", "url"), ("url",)]),
    "idx_uri": ([("value",)], [("value",)]),
}


def _old(table: str) -> list[tuple[str, list[str]]]:
    before = _VALUE_INDEXES[table][0]
    return [(f"ix_{table}_rid", ["rid"])] + [(f"ix_{table}_{'_'.join(c)}", ["type", "param", *c]) for c in before]


def _new(table: str) -> list[tuple[str, list[str]]]:
    after = _VALUE_INDEXES[table][1]
    return [(f"ix_{table}_rid_param", ["rid", "param"])] + [
        (f"ix_{table}_{'_'.join(c)}_rid", ["type", "param", *c, "rid"]) for c in after
    ]


def _swap(table: str, drop: list[tuple[str, list[str]]], create: list[tuple[str, list[str]]]) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        for name, _ in drop:
            batch_op.drop_index(name)
        for name, columns in create:
            batch_op.create_index(name, columns, unique=False)


def upgrade() -> None:
    for table in _VALUE_INDEXES:
        _swap(table, _old(table), _new(table))
    with op.batch_alter_table('resources', schema=None) as batch_op:
        batch_op.drop_index('ix_resources_type_lu')
        batch_op.create_index('ix_resources_type_lu_deleted', ['type', 'last_updated', 'deleted'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('resources', schema=None) as batch_op:
        batch_op.drop_index('ix_resources_type_lu_deleted')
        batch_op.create_index('ix_resources_type_lu', ['type', 'last_updated'], unique=False)
    for table in _VALUE_INDEXES:
        _swap(table, _new(table), _old(table))
