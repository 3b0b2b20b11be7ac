"""Security and privacy: the authorization seam, audit trail (SMART/OAuth2 arrive with issue 4)."""
