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


# -- S3: a real S3 protocol endpoint (moto's server on loopback), shared by the session ---------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server; boto3's chain finds its (dummy) credentials in env."""
    import os
    import socket

    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer

    env = {"AWS_ACCESS_KEY_ID": "medcloud-test", "AWS_SECRET_ACCESS_KEY": "medcloud-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket for one test."""
    import uuid

    from medcloud.imaging.s3 import make_client

    name = f"medcloud-{uuid.uuid4().hex[:12]}"
    make_client(endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name
