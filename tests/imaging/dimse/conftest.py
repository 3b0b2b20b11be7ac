"""DIMSE fixtures: our SCP on the archive of each backend, dcmtk peers.

The dcmtk command-line tools (Debian ``dcmtk``: echoscu, storescu, findscu, movescu, getscu,
storescp) are the interoperability peers; ``make dcmtk`` / ``.ci/run`` install them. Without
them the tests skip locally and fail in CI.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from medcloud.app import Services
from medcloud.config import RemoteAE, Settings
from medcloud.imaging.archive import Archive
from medcloud.imaging.dicomweb import build_archive
from medcloud.imaging.dimse.scp import DimseServer

sys.path.insert(0, str(Path(__file__).parent))  # _peers.py
from _peers import DEST_AET, IN_CI, SCU_AET, free_port, wait_port  # noqa: E402


@pytest.fixture(scope="session")
def dcmtk() -> None:
    if shutil.which("storescu") is None:
        if IN_CI:
            pytest.fail("dcmtk is not installed (apt-get install -y dcmtk; see .ci/run)")
        pytest.skip("dcmtk is not installed (apt-get install -y dcmtk)")


@pytest.fixture
def dest_port() -> int:
    return free_port()


@pytest.fixture
def dimse_settings(settings: Settings, dest_port: int) -> Settings:
    """Known peers: our test SCU and a storescp move destination on ``dest_port``."""
    return settings.with_overrides(dicom_remotes=[
        RemoteAE(title=SCU_AET, host="127.0.0.1", port=free_port()),
        RemoteAE(title=DEST_AET, host="127.0.0.1", port=dest_port),
    ])


@pytest.fixture
def archive(services: Services, dimse_settings: Settings) -> Archive:
    return build_archive(dimse_settings, services.db, services.fhir)


@pytest.fixture
def scp(archive: Archive, dimse_settings: Settings) -> Iterator[DimseServer]:
    server = DimseServer(archive, dimse_settings, host="127.0.0.1", port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def storescp(tmp_path: Path, dest_port: int, dcmtk: None) -> Iterator[Path]:
    """A dcmtk storescp as the C-MOVE destination (uncompressed syntaxes only); yields its directory."""
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", DEST_AET, "-od", str(out), str(dest_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(dest_port, proc)
    yield out
    proc.terminate()
    proc.wait(timeout=10)


