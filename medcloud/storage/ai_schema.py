"""The model registry's tables (issue 7), on the shared ``metadata``.

Replicas share one database, so the registry lives there whole: one row per registered model
version with its manifest, the package bytes (the canonical zip of ``ai/package.py``) in a table
of their own so that listing never reads them, and one row per model name naming its active
version. The primary key of ``ai_active_models`` is what makes "one active version per name"
hold under concurrent activations, on SQLite and PostgreSQL alike. Times are milliseconds since
the epoch (UTC): two versions registered in the same second still list in order.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, LargeBinary, String, Table, Text

from medcloud.storage.schema import metadata

ai_models = Table(
    "ai_models",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("task", String(32), nullable=False),
    Column("sha256", String(64), nullable=False),  # of model.onnx
    Column("package_sha256", String(64), nullable=False),  # of the stored canonical zip
    Column("size", BigInteger, nullable=False),  # bytes of the stored zip
    Column("manifest", Text, nullable=False),  # manifest.json as registered
    Column("registered", BigInteger, nullable=False),  # ms since the epoch
    Column("registered_by", String(256), nullable=True),
)

ai_model_packages = Table(
    "ai_model_packages",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

ai_active_models = Table(
    "ai_active_models",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("activated", BigInteger, nullable=False),  # ms since the epoch
)
