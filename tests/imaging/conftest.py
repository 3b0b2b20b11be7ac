"""Imaging fixtures: an archive on the ``services`` of each backend, and apps that mount DICOMweb."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette

from medcloud.app import Services
from medcloud.fhir import http as fhir_http
from medcloud.imaging.archive import Archive
from medcloud.imaging.dicomweb import build_archive, routes

sys.path.insert(0, str(Path(__file__).parent))  # tests/imaging/_factory.py


@pytest.fixture
def archive(services: Services) -> Archive:
    return build_archive(services.settings, services.db, services.fhir)


def dicomweb_app(services: Services, archive: Archive) -> Starlette:
    """FHIR and DICOMweb on one app, as create_app will wire them."""
    return Starlette(routes=[*fhir_http.routes(services.fhir), *routes(archive)])


@pytest.fixture
def dw(services: Services, archive: Archive):
    from starlette.testclient import TestClient

    with TestClient(dicomweb_app(services, archive), base_url="http://testserver") as c:
        yield c


@pytest.fixture
def dicomweb_live(services: Services, archive: Archive) -> Iterator[str]:
    """A real uvicorn server with FHIR + DICOMweb on a free loopback port; yields the DICOMweb base."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(dicomweb_app(services, archive), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("live server did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/dicomweb"
    server.should_exit = True
    thread.join(timeout=10)
