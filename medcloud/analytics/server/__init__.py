"""SQL-on-FHIR on the FHIR server: stored ViewDefinitions, ``$run`` over the store, store readers.

``views`` serves the ViewDefinition resource (not an R4 core type, so it has its own route like
AuditEvent), ``run`` is the ``$run`` operation, ``export`` and ``export_job`` are
``$viewdefinition-export`` (kick-off; the leased job and its status, result and file endpoints),
``store`` reads current resources out of medcloud.storage in keyset batches for DuckDB, ``warehouse`` keeps an incremental Parquet copy.
"""
