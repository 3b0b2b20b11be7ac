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
    # With ``deleted``: _summary=count and _lastUpdated are answered from the index alone. (Not a
    # separate (type, deleted) index: without statistics SQLite preferred it to (type, id) for _id.)
    Index("ix_resources_type_lu_deleted", "type", "last_updated", "deleted"),
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
    # (rid, param): sort keys and _has/_include look up one resource's rows of one parameter.
    Index(f"ix_{name}_rid_param", t.c.rid, t.c.param)
    # Value indexes end in rid so that a parameter's rid set comes from the index alone (covering):
    # searches intersect these sets before touching ``resources`` (search/plan.py).
    for cols in indexes:
        Index(f"ix_{name}_{'_'.join(cols)}_rid", *(t.c[c] for c in ("type", "param", *cols, "rid")))
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
    indexes=(("low", "high"), ("high", "low")),
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
    indexes=(("target_id", "target_type", "url"), ("url",)),
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

# The audit trail: one FHIR AuditEvent (``content``, JSON) per interaction, hash-chained in ``seq``
# order (security/audit_chain.py, audit_store.py). ``seq`` is assigned by the appender under the
# chain lock, so it is gap-free; the search columns are copies of fields of ``content`` (verify
# checks that they agree) for ``GET /fhir/AuditEvent``.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("recorded", BigInteger, nullable=False),  # microseconds since epoch, UTC
    Column("action", String(16), nullable=False),  # AuditEvent.action: C R U D E
    Column("outcome", String(8), nullable=False),  # AuditEvent.outcome: 0 4 8 12
    Column("subtype", String(32), nullable=False),  # restful-interaction code (read, create, ...)
    Column("who", String(256), nullable=True),  # the requesting agent (token subject)
    Column("client_id", String(256), nullable=True),  # the client application agent
    Column("patient", String(64), nullable=True),  # the patient entity (role 1): a Patient id
    Column("entity_type", String(64), nullable=True),  # the resource entity: type ...
    Column("entity_id", String(256), nullable=True),  # ... and id (NULL for type-level interactions)
    Column("address", String(64), nullable=True),  # agent.network.address: the source IP
    Column("content", LargeBinary, nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),  # the previous entry's hash (GENESIS first)
    Column("hash", LargeBinary(32), nullable=False),  # audit_chain.link(prev_hash, entry)
    Index("ix_audit_log_recorded", "recorded"),
    Index("ix_audit_log_who", "who"),
    Index("ix_audit_log_client", "client_id"),
    Index("ix_audit_log_patient", "patient"),
    Index("ix_audit_log_entity", "entity_id", "entity_type"),
    Index("ix_audit_log_address", "address"),
    Index("ix_audit_log_hash", "hash"),  # verify: which entry does a broken link point to?
)

# The chain head (one row, id 1): the last appended entry. Appenders read and advance it under
# the chain lock; verify compares it with the end of the log, so deleting the newest entries is
# noticed (as long as the head row is not rewritten too).
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
)

# Tables of other capabilities, on the same metadata (one schema, one migration history).
from medcloud.storage import ai_schema, cds_schema, imaging_schema, security_schema  # noqa: E402,F401
