"""FHIRPath for SQL-on-FHIR views: a parser to an AST and a compiler from the AST to DuckDB SQL."""

from medcloud.analytics.fhirpath.ast import Node
from medcloud.analytics.fhirpath.parser import parse

__all__ = ["Node", "parse"]
