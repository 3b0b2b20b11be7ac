"""Storage: SQL schema and dialect seam (SQLite and PostgreSQL share one code path), blobs."""
