"""``medcloud sof run --source`` for each source kind, and ``sof sync`` (incremental Parquet)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from medcloud.analytics.cli import app
from medcloud.analytics.engines.duckdb import DuckDBEngine
from medcloud.analytics.remote import fetch
from medcloud.analytics.server import warehouse
from medcloud.analytics.server.warehouse import WarehouseSource, sync
from medcloud.fhir import router
from medcloud.fhir.exchange import FhirRequest

VIEW = {"resourceType": "ViewDefinition", "resource": "Patient", "status": "active",
        "select": [{"column": [{"name": "id", "path": "getResourceKey()"},
                               {"name": "family", "path": "name.family.first()"}]}]}
runner = CliRunner()


def _call(services, method, path, body=None):
    resp = router.handle(services.fhir, FhirRequest(method, path, [], body=body))
    assert resp.status < 300, resp.resource
    return json.loads(resp.raw) if resp.raw else None


def _patient(services, family: str) -> str:
    return str(_call(services, "POST", "Patient", {"resourceType": "Patient", "name": [{"family": family}]})["id"])


def _rows(path: Path) -> set[tuple[str, str]]:
    with open(path, newline="") as fh:
        return {(r["id"], r["family"]) for r in csv.DictReader(fh)}


def _view(tmp_path: Path) -> Path:
    p = tmp_path / "view.json"
    p.write_text(json.dumps(VIEW))
    return p


@pytest.fixture
def data_dir(tmp_path):
    """A plain medcloud data dir: its SQLite store is DATA_DIR/medcloud.db, as ``medcloud serve`` makes it."""
    from medcloud.app import build_services
    from medcloud.config import Settings

    folder = tmp_path / "medcloud-data"
    svc = build_services(Settings(data_dir=folder, auth=False))
    yield folder, svc
    svc.close()


def test_source_data_dir_reads_the_store_directly(services, settings, tmp_path, backend):
    a, b = _patient(services, "Ames"), _patient(services, "Baker")
    _call(services, "DELETE", f"Patient/{b}")
    out = tmp_path / "out.csv"
    args = ["run", str(_view(tmp_path)), "--source", str(settings.data_dir), "--out", str(out), "--db", backend]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _rows(out) == {(a, "Ames")}


def test_source_server_url_uses_bulk_export(services, live_server, tmp_path):
    a = _patient(services, "Ames")
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["run", str(_view(tmp_path)), "--source", live_server, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _rows(out) == {(a, "Ames")}


def test_source_server_without_export_falls_back_to_paging_search(services, live_server, tmp_path):
    ids = {_patient(services, f"P{i}") for i in range(5)}
    class NoExport(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/$export"):
                return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})
            return super().handle_request(request)

    with httpx.Client(transport=NoExport()) as client:
        got = fetch(live_server, "Patient", tmp_path / "dl", page_size=2, client=client)
    assert got.method == "search" and "not offered" in got.notes[0]
    lines = [json.loads(x) for f in got.files for x in f.read_text().splitlines()]
    assert {r["id"] for r in lines} == ids  # 5 resources over 3 pages, none twice
    assert len(lines) == 5


def test_source_server_url_refused_token_is_a_clear_error(tmp_path):
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"resourceType": "OperationOutcome",
                                         "issue": [{"severity": "error", "code": "login", "diagnostics": "no"}]})

    with httpx.Client(transport=httpx.MockTransport(refuse)) as client, pytest.raises(Exception, match="refused"):
        fetch("http://127.0.0.1:9/fhir", "Patient", tmp_path, client=client)


def test_source_missing_path_exits_3(tmp_path):
    result = runner.invoke(app, ["run", str(_view(tmp_path)), "--source", str(tmp_path / "nope"),
                                 "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 3 and "no such file" in result.output


def _wh_rows(out: Path) -> set[tuple[str, str]]:
    with DuckDBEngine() as engine:
        return {(r["id"], r["family"]) for r in engine.run(VIEW, WarehouseSource(out)).rows}


def _parts(out: Path, rtype: str) -> list[str]:
    return list(warehouse.read_manifest(out)["parts"].get(rtype, []))


def test_sync_copies_once_then_adds_only_changes_and_handles_deletes(services, tmp_path):
    out = tmp_path / "wh"
    a, b, c = (_patient(services, n) for n in ("Ames", "Baker", "Cole"))
    first = sync(services.db, out)
    assert first.changed == {"Patient": 3} and _wh_rows(out) == {(a, "Ames"), (b, "Baker"), (c, "Cole")}
    assert len(_parts(out, "Patient")) == 1

    again = sync(services.db, out)  # nothing changed: no new part, even within the overlap window
    assert again.changed == {} and len(_parts(out, "Patient")) == 1

    _call(services, "PUT", f"Patient/{b}", {"resourceType": "Patient", "id": b, "name": [{"family": "Bakker"}]})
    _call(services, "DELETE", f"Patient/{c}")
    d = _patient(services, "Dunn")
    third = sync(services.db, out)
    assert third.changed == {"Patient": 3} and third.deleted == {"Patient": 1}
    assert _wh_rows(out) == {(a, "Ames"), (b, "Bakker"), (d, "Dunn")}
    assert len(_parts(out, "Patient")) == 2

    # views run over the folder with --source DIR
    res = runner.invoke(app, ["run", str(_view(tmp_path)), "--source", str(out), "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 0, res.output
    assert _rows(tmp_path / "o.csv") == {(a, "Ames"), (b, "Bakker"), (d, "Dunn")}


def test_sync_crash_before_the_manifest_leaves_the_previous_state(services, tmp_path, monkeypatch):
    out = tmp_path / "wh"
    a = _patient(services, "Ames")
    sync(services.db, out)
    _patient(services, "Baker")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(warehouse, "_write_manifest", crash)
    with pytest.raises(OSError):
        sync(services.db, out)
    assert _wh_rows(out) == {(a, "Ames")}  # the new part exists but is not listed
    monkeypatch.undo()
    sync(services.db, out)
    assert len(_wh_rows(out)) == 2
    listed = set(_parts(out, "Patient"))
    on_disk = {f"Patient/{p.name}" for p in (out / "Patient").iterdir()}
    assert on_disk == listed  # the crashed run's stray part was removed


def test_sync_compacts_many_parts(services, tmp_path, monkeypatch):
    monkeypatch.setattr(warehouse, "COMPACT_AT", 3)
    out = tmp_path / "wh"
    pid = _patient(services, "V0")
    for i in range(1, 4):
        sync(services.db, out)
        _call(services, "PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid, "name": [{"family": f"V{i}"}]})
    result = sync(services.db, out)
    assert result.compacted == ("Patient",) and len(_parts(out, "Patient")) == 1
    assert _wh_rows(out) == {(pid, "V3")}


def test_sync_cli_refuses_a_folder_without_a_store(tmp_path):
    result = runner.invoke(app, ["sync", "--data-dir", str(tmp_path), "--out", str(tmp_path / "wh")])
    assert result.exit_code == 3 and "no medcloud store" in result.output


def test_sync_and_run_cli_on_a_data_dir(data_dir, tmp_path):
    folder, svc = data_dir
    a = _patient(svc, "Ames")
    result = runner.invoke(app, ["sync", "--data-dir", str(folder), "--out", str(tmp_path / "wh")])
    assert result.exit_code == 0, result.output
    assert "Patient: 1 changed (0 deleted)" in result.output
    out = tmp_path / "o.csv"
    result = runner.invoke(app, ["run", str(_view(tmp_path)), "--source", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _rows(out) == {(a, "Ames")}


def test_fetch_prefers_bulk_export(services, live_server, tmp_path):
    a = _patient(services, "Ames")
    got = fetch(live_server, "Patient", tmp_path / "dl")
    assert got.method == "bulk"
    assert [json.loads(x)["id"] for f in got.files for x in f.read_text().splitlines()] == [a]


def test_client_credentials_token_from_smart_configuration_is_sent(tmp_path):
    from medcloud.analytics.remote import Credentials

    seen: list[tuple[str, str | None]] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx.Response(200, json={"token_endpoint": "http://fhir.test/auth/token"})
        if request.url.path == "/auth/token":
            assert b"grant_type=client_credentials" in request.content
            return httpx.Response(200, json={"access_token": "tok-1", "token_type": "bearer"})
        if request.url.path.endswith("/$export"):
            return httpx.Response(501)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "Patient", "id": "x"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Organization", "id": "o"}, "search": {"mode": "include"}}]})

    creds = Credentials(client_id="app", client_secret="s3cret")
    with httpx.Client(transport=httpx.MockTransport(server)) as client:
        got = fetch("http://fhir.test/fhir", "Patient", tmp_path, creds, client=client)
    assert got.method == "search"
    assert [json.loads(x)["id"] for x in got.files[0].read_text().splitlines()] == ["x"]
    assert ("/fhir/$export", "Bearer tok-1") in seen and ("/fhir/Patient", "Bearer tok-1") in seen
