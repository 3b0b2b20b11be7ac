"""``/.well-known/smart-configuration`` (SMART App Launch v2, §Conformance:
https://hl7.org/fhir/smart-app-launch/conformance.html), served at the root and at the FHIR base."""

from __future__ import annotations

from typing import Any

from medcloud.config import Settings
from medcloud.security.oauth.assertions import ALGORITHMS
from medcloud.security.oauth.store import AUTH_METHODS, GRANT_TYPES
from medcloud.security.scopes import ADMIN_SCOPE

CAPABILITIES = (
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)


def smart_configuration(settings: Settings) -> dict[str, Any]:
    issuer = settings.auth_issuer
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/jwks",
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "introspection_endpoint": f"{issuer}/introspect",
        "revocation_endpoint": f"{issuer}/revoke",
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "scopes_supported": ["system/*.cruds", "user/*.cruds", "patient/*.cruds", "system/*.rs", "user/*.rs",
                             "patient/*.rs", "launch/patient", "fhirUser", "offline_access", "online_access",
                             ADMIN_SCOPE],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": list(CAPABILITIES),
    }
