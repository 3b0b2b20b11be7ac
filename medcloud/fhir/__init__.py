"""The FHIR R4 server: domain (interactions, search, operations) behind a thin HTTP edge."""
