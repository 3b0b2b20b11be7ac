"""SQL-on-FHIR on the FHIR server: stored ViewDefinitions, ``$run`` over the store, store readers.

``views`` serves the ViewDefinition resource (not an R4 core type, so it has its own route like
AuditEvent), ``run`` is the ``$run`` operation, ``store`` reads current resources out of
medcloud.storage in keyset batches for DuckDB, ``warehouse`` keeps an incremental Parquet copy.
"""
