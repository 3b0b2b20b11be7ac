"""``medcloud load`` and ``medcloud export`` with real files, in-process and against a running server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from medcloud.cli import app

RESOURCES = [
    {"resourceType": "Patient", "id": "nd1", "name": [{"family": "Line"}]},
    {"resourceType": "Observation", "id": "ndo1", "status": "final", "code": {"text": "x"},
     "subject": {"reference": "Patient/nd1"}},
    {"resourceType": "Practitioner", "name": [{"family": "NoId"}]},
]


@pytest.fixture
def smallest_synthea(synthea_dir: Path) -> Path:
    files = sorted(synthea_dir.glob("*.json"), key=lambda p: p.stat().st_size)
    assert files
    return files[0]


def _bundle_count(path: Path) -> int:
    return len(orjson.loads(path.read_bytes())["entry"])


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def inputs(tmp_path: Path, smallest_synthea: Path) -> Path:
    """A directory with a Synthea transaction Bundle, an NDJSON file, and nested good NDJSON."""
    d = tmp_path / "in"
    (d / "nested").mkdir(parents=True)
    src = smallest_synthea
    (d / "patient.json").write_bytes(src.read_bytes())
    (d / "nested" / "more.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in RESOURCES))
    return d


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_load_directory_of_bundles_and_ndjson_exits_0(inputs: Path, data_dir: Path, backend: str):
    code, out = _run("load", str(inputs), "--data-dir", str(data_dir), "--db", backend)
    assert code == 0, out
    expected = _bundle_count(inputs / "patient.json") + len(RESOURCES)
    assert f"loaded {expected:,} resources from 2 of 2 files" in out


def test_load_reports_corrupt_files_and_lines_and_continues(inputs: Path, data_dir: Path, backend: str,
                                                            tmp_path: Path):
    (inputs / "broken.json").write_text('{"resourceType": "Bundle", "type": "transaction", "entry": [')
    bad_lines = b"".join([orjson.dumps(RESOURCES[0]) + b"\n", b"{not json\n",
                          orjson.dumps({"resourceType": "Observation", "id": "bad", "status": "wrong-code",
                                        "code": {"text": "x"}}) + b"\n"])
    (inputs / "mixed.ndjson").write_bytes(bad_lines)
    code, out = _run("load", str(inputs), "--data-dir", str(data_dir), "--db", backend, "--concurrency", "2")
    assert code == 1, out
    assert "broken.json: file: not valid JSON" in out
    assert "mixed.ndjson: line 2: not valid JSON" in out
    assert "mixed.ndjson: line 3:" in out
    good = _bundle_count(inputs / "patient.json") + len(RESOURCES) + 1
    assert f"loaded {good:,} resources from 2 of 4 files" in out and "2 file(s) with errors" in out
    code, out = _run("load", str(tmp_path / "missing.ndjson"), "--data-dir", str(data_dir), "--db", backend)
    assert code == 1 and "no such file" in out


def test_export_in_process_writes_ndjson_per_type(inputs: Path, data_dir: Path, backend: str, tmp_path: Path):
    assert _run("load", str(inputs), "--data-dir", str(data_dir), "--db", backend)[0] == 0
    out_dir = tmp_path / "out"
    code, out = _run("export", "--out", str(out_dir), "--type", "Patient,Observation", "--data-dir", str(data_dir),
                     "--db", backend)
    assert code == 0, out
    src = orjson.loads((inputs / "patient.json").read_bytes())
    observations = sum(1 for e in src["entry"] if e["resource"]["resourceType"] == "Observation") + 1
    lines = {p.name: p.read_bytes().splitlines() for p in out_dir.glob("*.ndjson")}
    assert set(lines) == {"Patient.001.ndjson", "Observation.001.ndjson"}
    assert len(lines["Patient.001.ndjson"]) == 2 and len(lines["Observation.001.ndjson"]) == observations
    assert _run("export", "--out", str(out_dir), "--type", "Nope", "--data-dir", str(data_dir), "--db", backend)[0] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(settings) -> Iterator[str]:
    import uvicorn

    from medcloud.app import create_app

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/fhir"
    srv.should_exit = True
    thread.join(30)


@pytest.mark.integration
def test_load_and_export_against_a_server(inputs: Path, server: str, tmp_path: Path):
    (inputs / "broken.ndjson").write_text("nope\n")
    code, out = _run("load", str(inputs), "--server", server)
    assert code == 1 and "broken.ndjson: line 1" in out
    out_dir = tmp_path / "out"
    code, out = _run("export", "--out", str(out_dir), "--type", "Patient", "--server", server)
    assert code == 0, out
    patients = (out_dir / "Patient.001.ndjson").read_bytes().splitlines()
    assert len(patients) == 2
