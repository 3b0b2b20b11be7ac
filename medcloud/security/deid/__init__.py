"""De-identification: one policy object (HIPAA Safe Harbor classes) driving per-format walkers."""

from medcloud.security.deid.fhir import DeidContext, deidentify
from medcloud.security.deid.policy import Action, DeidPolicy

__all__ = ["Action", "DeidContext", "DeidPolicy", "deidentify"]
