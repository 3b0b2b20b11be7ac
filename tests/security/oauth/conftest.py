"""Fixtures of the authorization server tests (helpers in _oauth_helpers.py, importable by the tests)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _oauth_helpers import make_client, oauth_services, oauth_settings, web  # noqa: E402,F401
