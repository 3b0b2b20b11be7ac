"""Clinical decision support (issue 8): CDS Hooks 2.0 services over the FHIR record, FHIR RiskAssessment
with explanations. ``http.py`` is the edge; everything else is domain code (docs/cds.md)."""
