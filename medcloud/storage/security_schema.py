"""The OAuth2 / SMART authorization server's tables (issue 4), on the shared ``metadata``.

Everything the server must agree on across replicas lives here: registered clients and users,
the ES256 signing keys, outstanding authorization codes and refresh tokens, revoked access-token
``jti``s and the client-assertion ``jti``s already seen (replay). Secrets, codes and refresh
tokens are stored only as hashes (scrypt for long-lived secrets, SHA-256 for random one-use
values), so a database dump hands out nothing that can be presented to ``/auth/token``.
Times are whole seconds since the epoch (UTC), like JWT ``exp``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, LargeBinary, String, Table, Text

from medcloud.storage.schema import metadata

oauth_clients = Table(
    "oauth_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("secret_hash", String(256), nullable=True),  # scrypt (security/oauth/hashing.py); NULL: no secret
    # client_secret_basic | client_secret_post | private_key_jwt | none (public app, PKCE only)
    Column("auth_method", String(32), nullable=False),
    Column("jwks", Text, nullable=True),  # registered JWK Set (JSON), private_key_jwt
    Column("jwks_uri", String(2048), nullable=True),  # or where to fetch it
    Column("redirect_uris", Text, nullable=False),  # JSON list, matched exactly
    Column("scopes", Text, nullable=False),  # space separated: the most a token may carry
    Column("grant_types", Text, nullable=False),  # space separated
    Column("revoked", Boolean, nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("rotated", BigInteger, nullable=True),  # last secret rotation
)

oauth_users = Table(
    "oauth_users",
    metadata,
    Column("username", String(128), primary_key=True),
    Column("password_hash", String(256), nullable=False),
    Column("fhir_user", String(256), nullable=True),  # e.g. Practitioner/123 (the fhirUser claim)
    Column("patient", String(64), nullable=True),  # linked Patient id: the launch patient of a patient user
    Column("disabled", Boolean, nullable=False),
    Column("created", BigInteger, nullable=False),
)

# Server signing keys. ``generation`` orders them: the highest is current; older ones stay until
# ``expires`` (retired + the longest access-token lifetime) so tokens they signed still verify.
# Generation 1 is created by insert-ignore, so replicas starting together agree on one key.
oauth_signing_keys = Table(
    "oauth_signing_keys",
    metadata,
    Column("generation", Integer, primary_key=True, autoincrement=False),
    Column("kid", String(64), nullable=False, unique=True),
    Column("alg", String(16), nullable=False),
    Column("private_pem", LargeBinary, nullable=False),  # PKCS#8 PEM
    Column("public_jwk", Text, nullable=False),  # JSON
    Column("created", BigInteger, nullable=False),
    Column("retired", BigInteger, nullable=True),
    Column("expires", BigInteger, nullable=True),  # may be deleted after this; NULL while current
)

oauth_codes = Table(
    "oauth_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),  # SHA-256 hex of the code
    Column("client_id", String(64), nullable=False),
    Column("username", String(128), nullable=False),
    Column("redirect_uri", String(2048), nullable=False),
    Column("scope", Text, nullable=False),  # granted, space separated
    Column("patient", String(64), nullable=True),
    Column("fhir_user", String(256), nullable=True),
    Column("code_challenge", String(128), nullable=False),  # S256
    Column("expires", BigInteger, nullable=False),
    Index("ix_oauth_codes_expires", "expires"),
)

# Refresh tokens, rotated on use. All tokens descended from one authorization share ``family``:
# presenting a rotated token again revokes the whole family (RFC 9700 §4.14.2).
oauth_refresh_tokens = Table(
    "oauth_refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # SHA-256 hex
    Column("family", String(64), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("scope", Text, nullable=False),
    Column("patient", String(64), nullable=True),
    Column("fhir_user", String(256), nullable=True),
    Column("issued", BigInteger, nullable=False),
    Column("expires", BigInteger, nullable=False),
    Column("rotated", Boolean, nullable=False),  # used once: presenting it again is reuse
    Column("revoked", Boolean, nullable=False),
    Index("ix_oauth_refresh_family", "family"),
    Index("ix_oauth_refresh_expires", "expires"),
)

# Access tokens revoked before their ``exp`` (RFC 7009); checked by verify_access_token.
oauth_revoked_tokens = Table(
    "oauth_revoked_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires", BigInteger, nullable=False),
    Index("ix_oauth_revoked_expires", "expires"),
)

# ``jti``s of client assertions already accepted (private_key_jwt replay), kept until their ``exp``.
oauth_used_jtis = Table(
    "oauth_used_jtis",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(256), primary_key=True),
    Column("expires", BigInteger, nullable=False),
    Index("ix_oauth_used_jtis_expires", "expires"),
)
