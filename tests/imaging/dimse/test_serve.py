"""The SCP as processes: ``medcloud dicom serve`` standalone, and ``medcloud serve`` with N workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _factory
import httpx
import pytest
from _peers import free_port, run, wait_port, write

from medcloud.config import RemoteAE, Settings

pytestmark = pytest.mark.usefixtures("dcmtk")
EXE = str(Path(sys.executable).parent / "medcloud")


def _db_args(settings: Settings) -> list[str]:
    return ["--data-dir", str(settings.data_dir), "--db", settings.db_url]


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_dicom_serve_standalone(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, MEDCLOUD_DICOM_REMOTES='[{"title": "MODALITY", "host": "127.0.0.1", "port": 104}]')
    proc = subprocess.Popen([EXE, "dicom", "serve", *_db_args(settings), "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc, timeout=30)
        files = write(tmp_path / "in", [_factory.instance(rows=8, columns=8, patient_id="PID-SERVE")])
        assert run("storescu", "-aet", "MODALITY", "127.0.0.1", str(port), str(files[0])).returncode == 0
        assert run("echoscu", "-aet", "STRANGER", "127.0.0.1", str(port)).returncode != 0
        found = run("findscu", "-S", "-v", "-aet", "MODALITY", "127.0.0.1", str(port),
                    "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PID-SERVE")
        assert "Find Response: 1 (Pending)" in found.stdout + found.stderr
    finally:
        code = _stop(proc)
    assert code == 0, proc.stderr.read().decode() if proc.stderr else ""


def test_serve_with_workers_runs_one_scp_sharing_the_archive(tmp_path: Path) -> None:
    """One backend only: two uvicorn workers take most of the ~10 s; the SCP code path is the same."""
    http, dimse = free_port(), free_port()
    env = dict(os.environ, MEDCLOUD_DICOM_ALLOW_UNKNOWN="true", MEDCLOUD_LOG_LEVEL="warning")
    proc = subprocess.Popen([EXE, "serve", "--data-dir", str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(http),
                             "--workers", "2", "--no-auth", "--dicom-port", str(dimse)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        files = write(tmp_path / "in", [_factory.instance(rows=8, columns=8, patient_id="PID-HTTP")])
        assert run("storescu", "-aet", "ANY", "127.0.0.1", str(dimse), str(files[0])).returncode == 0
        r = httpx.get(f"http://127.0.0.1:{http}/dicomweb/studies", params={"PatientID": "PID-HTTP"}, timeout=10)
        assert r.status_code == 200 and len(r.json()) == 1
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # graceful shutdown of N workers is uvicorn's business
        proc.wait(timeout=20)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "DIMSE: AE MEDCLOUD" in err and "NOT STARTED" not in err and "Address already in use" not in err


def test_remote_ae_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        RemoteAE(title="A\\B", host="h", port=104)
    with pytest.raises(ValueError):
        RemoteAE(title="WAY-TOO-LONG-AE-TITLE", host="h", port=104)
    with pytest.raises(ValueError):
        RemoteAE(title="OK", host="h", port=0)
    assert RemoteAE(title=" PACS ", host="h", port=104).title == "PACS"


def test_several_scp_processes_share_the_port_and_die_with_their_parent(settings: Settings, tmp_path: Path) -> None:
    """``--processes 2``: a second SCP process binds the same port (SO_REUSEPORT); associations
    land on both and every instance is stored once; a kill -9 of the parent takes the child down."""
    import psutil

    port = free_port()
    env = dict(os.environ, MEDCLOUD_LOG_LEVEL="warning")
    proc = subprocess.Popen([EXE, "dicom", "serve", *_db_args(settings), "--host", "127.0.0.1", "--port", str(port),
                             "--allow-unknown", "--processes", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc, timeout=60)
        deadline = time.monotonic() + 30
        while True:  # the banner comes after both processes listen
            children = [c for c in psutil.Process(proc.pid).children() if "medcloud" in " ".join(c.cmdline())
                        or "multiprocessing" in " ".join(c.cmdline())]
            scps = [c for c in children if any(conn.laddr.port == port and conn.status == psutil.CONN_LISTEN
                                               for conn in c.net_connections("tcp"))]
            if scps or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert scps, "no second SCP process listens on the port"
        child = scps[0]
        data = [_factory.instance(rows=8, columns=8, patient_id="PID-POOL") for _ in range(12)]
        files = write(tmp_path / "in", data)
        senders = [subprocess.Popen(["storescu", "-aet", f"M{k}", "127.0.0.1", str(port), *map(str, files[k::6])],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k in range(6)]
        assert [s.wait(timeout=60) for s in senders] == [0] * 6
        found = run("findscu", "-S", "-v", "-aet", "M0", "127.0.0.1", str(port), "-k", "QueryRetrieveLevel=IMAGE",
                    "-k", "PatientID=PID-POOL", "-k", "StudyInstanceUID", "-k", "SOPInstanceUID")
        assert (found.stdout + found.stderr).count("(Pending)") == 12
        proc.kill()
        proc.wait(timeout=10)
        assert child.wait(timeout=15) is not None or not child.is_running()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
