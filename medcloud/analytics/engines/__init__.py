"""View runners. DuckDB is embedded and always available; Spark is an optional engine."""
