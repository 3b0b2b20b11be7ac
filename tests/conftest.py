"""Shared fixtures. ``backend`` runs a test on SQLite and on PostgreSQL (real server, no mocks).

PostgreSQL: MEDCLOUD_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres) is the admin
connection; each test session (each xdist worker) creates its own database and drops it after.
With CI=true an unreachable PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from medcloud.app import Services, build_services, create_app
from medcloud.config import Settings
from medcloud.storage.schema import metadata

PG_ADMIN = os.environ.get("MEDCLOUD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Apps built by tests start with an empty model registry: registering the shipped image models costs
# each app a few hundred ms and would change what registry tests see. tests/ai/test_default_models.py
# turns them on explicitly.
os.environ.setdefault("MEDCLOUD_AI_DEFAULT_MODELS", "false")


@pytest.fixture(autouse=True)
def _pydicom_validation_modes() -> Iterator[None]:
    """Restore pydicom's process-global validation modes after every test.

    dicomweb-client's file helpers set them to RAISE around a call and do not restore them when
    the call raises (no try/finally), which made later tests in the same worker fail on pydicom's
    own odd test files depending on xdist's scheduling.
    """
    from pydicom import config as pydicom_config

    reading = pydicom_config.settings.reading_validation_mode
    writing = pydicom_config.settings.writing_validation_mode
    yield
    pydicom_config.settings.reading_validation_mode = reading
    pydicom_config.settings.writing_validation_mode = writing


def _pg_available() -> str | None:
    try:
        eng = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as e:  # noqa: BLE001 - reported as the skip/fail reason
        return str(e).splitlines()[0]


@pytest.fixture(scope="session")
def pg_url(worker_id: str) -> Iterator[str]:
    problem = _pg_available()
    if problem:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but not reachable: {problem}")
        pytest.skip(f"PostgreSQL not reachable: {problem}")
    name = f"medcloud_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    wi = getattr(request.config, "workerinput", None)
    return wi["workerid"] if wi else "main"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL, empty of data: SQLite in tmp_path, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'medcloud.db'}"
    url: str = request.getfixturevalue("pg_url")
    _migrate_once(url)
    eng = create_engine(url)
    with eng.begin() as c:
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        c.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    eng.dispose()
    return url


_MIGRATED: set[str] = set()


def _migrate_once(url: str) -> None:
    if url not in _MIGRATED:
        from medcloud.storage.migrate import upgrade
        from medcloud.storage.sql.database import Database

        db = Database.connect(url)
        upgrade(db)
        db.dispose()
        _MIGRATED.add(url)


@pytest.fixture
def settings(backend: str, tmp_path: Path) -> Settings:
    # auth=False: the suite exercises FHIR/DICOM behaviour, not tokens; tests/security/test_edge_auth.py
    # runs the same apps with authentication on.
    return Settings(data_dir=tmp_path / "data", db=backend, auth=False)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    svc = build_services(settings)
    yield svc
    svc.close()


@pytest.fixture
def client(settings: Settings, services: Services):
    from starlette.testclient import TestClient

    app = create_app(settings, services)
    with TestClient(app, base_url="http://testserver") as c:
        yield c


@pytest.fixture(scope="session")
def synthea_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthea transaction Bundles for 2 patients (seeded, fixed reference date), generated once per run.

    Shared by all xdist workers through a lock file next to their temp dirs. Returns the folder
    holding the ``*.json`` Bundles.
    """
    return synthea(tmp_path_factory, patients=2, seed=11)


def synthea(tmp_path_factory: pytest.TempPathFactory, *, patients: int, seed: int) -> Path:
    import fcntl
    import shutil
    import subprocess
    import sys

    root = tmp_path_factory.getbasetemp().parent / f"synthea-p{patients}-s{seed}"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(str(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "DONE"
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            exe = Path(sys.executable).parent / "synthea"
            subprocess.run(
                [str(exe), "-p", str(patients), "-s", str(seed), "-r", "20250101", "-o", str(root)],
                check=True, capture_output=True, timeout=600,
            )
            done.write_text("ok")
    return root / "fhir"


@pytest.fixture
def live_server(settings: Settings, services: Services) -> Iterator[str]:
    """A real uvicorn server on a free loopback port (for clients that need sockets); yields the FHIR base."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(settings, services)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("live server did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/fhir"
    server.should_exit = True
    thread.join(timeout=10)
