"""The public surface of medcloud.analytics is deliberate (STYLE.md §2: public on purpose)."""

import medcloud.analytics


def test_public_names_are_exactly_the_documented_ones() -> None:
    assert sorted(medcloud.analytics.__all__) == [
        "BadLine",
        "DuckDBEngine",
        "EngineUnavailable",
        "EvaluationError",
        "FhirPathSyntaxError",
        "NdjsonSource",
        "ParquetSource",
        "ResourcesSource",
        "SourceError",
        "ViewDefinition",
        "ViewDefinitionError",
        "ViewResult",
        "WriteResult",
        "ndjson_to_parquet",
        "parse_view",
        "source_from_path",
    ]
    for name in medcloud.analytics.__all__:
        assert hasattr(medcloud.analytics, name)


def test_runs_over_lists_leave_no_temp_tables_behind() -> None:
    with medcloud.analytics.DuckDBEngine() as engine:
        view = {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]}
        for _ in range(3):
            engine.run(view, [{"resourceType": "Patient", "id": "p"}])
        assert engine.con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone() == (0,)
