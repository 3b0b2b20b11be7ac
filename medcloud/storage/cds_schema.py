"""CDS Hooks tables (issue 8), on the shared ``metadata``.

``cds_jtis`` remembers every accepted CDS client JWT id until its token expires: the primary key
makes a replayed ``jti`` fail its insert, on every replica at once (SQLite and PostgreSQL alike).
``cds_feedback`` keeps what clinicians did with the cards (CDS Hooks 2.0 feedback endpoint).
Times are milliseconds since the epoch (UTC).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from medcloud.storage.schema import metadata

cds_jtis = Table(
    "cds_jtis",
    metadata,
    Column("iss", String(512), primary_key=True),
    Column("jti", String(256), primary_key=True),
    Column("expires", BigInteger, nullable=False),
    Index("ix_cds_jtis_expires", "expires"),
)

cds_feedback = Table(
    "cds_feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(64), nullable=False),
    Column("card", String(64), nullable=False),  # the card's uuid
    Column("outcome", String(16), nullable=False),  # accepted | overridden
    Column("client", String(512), nullable=False),  # the JWT's iss
    Column("received", BigInteger, nullable=False),
    Column("body", Text, nullable=False),  # the feedback item as sent (JSON)
    Index("ix_cds_feedback_service_card", "service", "card"),
)
