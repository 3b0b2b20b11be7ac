"""medcloud: a self-hostable health-data cloud (FHIR R4 server, imaging, analytics, AI)."""

__version__ = "0.1.0"
