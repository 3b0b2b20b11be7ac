"""The authorization server's fixtures (tests/security/oauth/_oauth_helpers.py) for the /ai/models tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "security" / "oauth"))

from _oauth_helpers import make_client, oauth_services, oauth_settings, web  # noqa: E402,F401
