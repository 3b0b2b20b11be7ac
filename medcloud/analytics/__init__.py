"""medcloud analytics: SQL-on-FHIR v2 ViewDefinitions compiled to SQL (DuckDB now, Spark later).

from medcloud.analytics import DuckDBEngine, parse_view
with DuckDBEngine() as engine:
    result = engine.run(view_json, resources_or_source)
"""

from medcloud.analytics.engines._sources import NdjsonSource, ParquetSource, ResourcesSource, source_from_path
from medcloud.analytics.engines.duckdb import DuckDBEngine, ViewResult, WriteResult, ndjson_to_parquet
from medcloud.analytics.errors import (
    BadLine,
    EngineUnavailable,
    EvaluationError,
    FhirPathSyntaxError,
    SourceError,
    ViewDefinitionError,
)
from medcloud.analytics.viewdef import ViewDefinition, parse_view

__all__ = [
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
