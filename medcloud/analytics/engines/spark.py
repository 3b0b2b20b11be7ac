"""Spark engine placeholder: probes for pyspark and says clearly that the engine is not built yet.

The DuckDB compiler's list-expression design (``_duckdb_view.py``) maps onto Spark SQL's
``transform``/``filter``/``flatten``/``explode``; the Spark engine will reuse the ViewDefinition and
FHIRPath front end and swap the SQL dialect.
"""

from __future__ import annotations

import importlib.util

from medcloud.analytics.errors import EngineUnavailable


def available() -> bool:
    """True when pyspark is importable (the engine itself still does not exist)."""
    return importlib.util.find_spec("pyspark") is not None


class SparkEngine:
    name = "spark"

    def __init__(self, master: str | None = None) -> None:
        detail = "pyspark is installed" if available() else "pyspark is not installed"
        raise EngineUnavailable(f"the Spark engine is not available yet ({detail}); use the duckdb engine")
