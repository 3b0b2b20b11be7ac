"""Search indexing: FHIR R4 search-parameter expressions compiled once, rows extracted per write."""

from medcloud.fhir.indexing.extract import IndexEntries, Indexer

__all__ = ["IndexEntries", "Indexer"]
