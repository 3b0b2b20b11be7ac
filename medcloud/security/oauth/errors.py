"""Token-endpoint errors as RFC 6749 §5.2 names them; ``http.py`` renders them as JSON."""

from __future__ import annotations


class OAuthError(Exception):
    """``error`` is the RFC 6749 code; ``description`` is safe to show (never echoes a secret)."""

    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)


def invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


def invalid_grant(description: str) -> OAuthError:
    return OAuthError("invalid_grant", description)


def invalid_scope(description: str) -> OAuthError:
    return OAuthError("invalid_scope", description)
