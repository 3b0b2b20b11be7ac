"""Everything an interaction needs, wired once by ``app.create_app`` and passed down."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medcloud.config import Settings
from medcloud.storage.resources import ResourceStore
from medcloud.storage.sql.database import Database

if TYPE_CHECKING:
    from medcloud.fhir.indexing import Indexer
    from medcloud.fhir.paging import CursorCodec
    from medcloud.security.at_rest import AtRest
    from medcloud.security.guard import Guard
    from medcloud.security.http import EdgeAuth


def _now_us() -> int:
    return time.time_ns() // 1000


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class FhirContext:
    settings: Settings
    db: Database
    indexer: Indexer
    guard: Guard
    cursors: CursorCodec
    store: ResourceStore = field(default_factory=ResourceStore)
    clock: Callable[[], int] = _now_us  # microseconds since the epoch, UTC
    new_id: Callable[[], str] = _new_id
    # Authentication shared by the app's HTTP edges (one token cache); built by ``EdgeAuth.of``.
    edge_auth: EdgeAuth | None = None
    # Encryption of the files kept under DATA_DIR (export NDJSON; DICOM via the archive's blob store).
    at_rest: AtRest | None = None
