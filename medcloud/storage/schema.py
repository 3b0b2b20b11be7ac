"""The relational schema, one definition for SQLite and PostgreSQL (SQLAlchemy Core).

Resources: ``resources`` holds one row per logical resource (type, id) naming its current
version, whose content is the (rid, version) row of ``resource_history``; every version (including deletes) is a row of the history with
a global, monotonically increasing ``vid`` that orders system history. Search indexes are one
table per search-parameter type, keyed by the logical resource ``rid`` and rewritten on each
version. Composite parameters store their components in the same tables with
``param = "<composite>#<i>"`` and a shared ``grp`` per matched element.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData()

# SQLite only makes INTEGER PRIMARY KEY an alias of rowid (auto-increment); PostgreSQL gets BIGINT identity.
Id = BigInteger().with_variant(Integer(), "sqlite")

resources = Table(
    "resources",
    metadata,
    Column("rid", Id, primary_key=True, autoincrement=True),
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),  # current version; its content is in resource_history
    Column("last_updated", BigInteger, nullable=False),  # microseconds since epoch, UTC
    Column("deleted", Boolean, nullable=False, default=False),
    Index("ux_resources_type_id", "type", "id", unique=True),
    Index("ix_resources_type_lu", "type", "last_updated"),
)

resource_history = Table(
    "resource_history",
    metadata,
    Column("vid", Id, primary_key=True, autoincrement=True),
    Column("rid", BigInteger, nullable=False),
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("method", String(8), nullable=False),  # POST PUT PATCH DELETE
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", LargeBinary, nullable=True),  # UTF-8 JSON; NULL for a delete
    Index("ux_history_rid_version", "rid", "version", unique=True),
    Index("ix_history_type_id", "type", "id", "version"),
    Index("ix_history_type_vid", "type", "vid"),
    Index("ix_history_lu", "last_updated"),
)


def _index_table(name: str, *columns: Column, indexes: tuple[tuple[str, ...], ...]) -> Table:
    t = Table(
        name,
        metadata,
        Column("rid", BigInteger, nullable=False),
        Column("type", String(64), nullable=False),
        Column("param", String(128), nullable=False),
        Column("grp", SmallInteger, nullable=False, default=0),
        *columns,
    )
    Index(f"ix_{name}_rid", t.c.rid)
    for cols in indexes:
        Index(f"ix_{name}_{'_'.join(cols)}", *(t.c[c] for c in ("type", "param", *cols)))
    return t


idx_string = _index_table(
    "idx_string",
    Column("value", Text, nullable=False),  # normalised: case-folded, accents removed
    Column("exact", Text, nullable=False),
    indexes=(("value",), ("exact",)),
)

idx_token = _index_table(
    "idx_token",
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    Column("text", Text, nullable=True),  # normalised display/text for :text
    indexes=(("code", "system"),),
)

idx_date = _index_table(
    "idx_date",
    Column("low", BigInteger, nullable=False),  # microseconds since epoch, inclusive
    Column("high", BigInteger, nullable=False),  # microseconds since epoch, inclusive
    indexes=(("low",), ("high",)),
)

idx_number = _index_table(
    "idx_number",
    Column("value", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    indexes=(("value",),),
)

idx_quantity = _index_table(
    "idx_quantity",
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    Column("unit", Text, nullable=True),
    Column("value", Float, nullable=False),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    indexes=(("code", "value"),),
)

idx_reference = _index_table(
    "idx_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(256), nullable=True),
    Column("url", Text, nullable=True),  # absolute / canonical references (version stripped)
    Column("version", Text, nullable=True),
    indexes=(("target_id", "target_type"), ("url",)),
)

idx_uri = _index_table(
    "idx_uri",
    Column("value", Text, nullable=False),
    indexes=(("value",),),
)

INDEX_TABLES = {
    "string": idx_string,
    "token": idx_token,
    "date": idx_date,
    "number": idx_number,
    "quantity": idx_quantity,
    "reference": idx_reference,
    "uri": idx_uri,
}

# Compartment membership: the resource ``rid`` belongs to compartment (comp_type, comp_id).
compartments = Table(
    "compartments",
    metadata,
    Column("rid", BigInteger, nullable=False),
    Column("comp_type", String(64), nullable=False),
    Column("comp_id", String(64), nullable=False),
    Column("type", String(64), nullable=False),  # type of the member resource
    Index("ix_compartments_owner", "comp_type", "comp_id", "type"),
    # $everything pages a compartment in rid order (keyset): this index serves it without a sort.
    Index("ix_compartments_owner_rid", "comp_type", "comp_id", "rid"),
    Index("ix_compartments_rid", "rid"),
)

# Background jobs (Bulk $export now; imaging/AI later). Claimed with a lease so any replica
# can run them and a killed worker's job is picked up again.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("status", String(16), nullable=False),  # queued running completed failed cancelled
    Column("request", LargeBinary, nullable=False),  # JSON
    Column("state", LargeBinary, nullable=True),  # JSON progress/checkpoint
    Column("result", LargeBinary, nullable=True),  # JSON
    Column("error", Text, nullable=True),
    Column("owner", String(256), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    Column("lease_until", BigInteger, nullable=True),
    Column("lease_owner", String(128), nullable=True),
    Index("ix_jobs_status", "status", "kind"),
)

# Small shared key/value state every replica must agree on (e.g. the cursor signing key).
server_state = Table(
    "server_state",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

# Audit records (AuditEvent-shaped JSON). The security issue adds the hash chain.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("recorded", BigInteger, nullable=False),
    Column("action", String(16), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("content", LargeBinary, nullable=False),
)

from medcloud.storage import imaging_schema  # noqa: E402,F401  (imaging tables on the same metadata)
