"""medcloud's built-in OAuth2 / SMART App Launch v2 authorization server, mounted at ``/auth``.

    store.py        clients and users (scrypt-hashed secrets)     hashing.py   secret and token hashes
    signing.py      ES256 server keys in the database, rotation   tokens.py    access tokens: issue, verify
    client_auth.py  who calls the token endpoint                  assertions.py private_key_jwt (RS384/ES384)
    grants.py       client_credentials, authorization_code, refresh_token, scope narrowing
    authorize.py    the authorization request, CSRF               pages.py     login + consent HTML
    http.py         Starlette routes                              discovery.py /.well-known/smart-configuration
    admin.py        the first admin client                        cli.py       ``medcloud admin ...``

See docs/security.md, "OAuth2 / SMART authorization server".
"""

from medcloud.security.oauth.admin import ensure_admin_client
from medcloud.security.oauth.http import routes
from medcloud.security.oauth.tokens import verify_access_token

__all__ = ["ensure_admin_client", "routes", "verify_access_token"]
