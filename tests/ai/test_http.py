"""``/ai/models`` over HTTP with authentication on: tokens required, admin scope to register."""

from __future__ import annotations

import base64

import pytest

from ._models import tabular_package


@pytest.fixture(scope="module")
def pkg():
    return tabular_package()


def _token(web, make_client, scope: str) -> dict[str, str]:
    c = make_client(scope)
    basic = base64.b64encode(f"{c.client_id}:{c.secret}".encode()).decode()
    r = web.post("/auth/token", data={"grant_type": "client_credentials", "scope": scope},
                 headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_models_need_a_token(web, pkg) -> None:
    assert web.get("/ai/models").status_code == 401
    assert web.get("/ai/models/toy-risk").status_code == 401
    r = web.post("/ai/models", content=pkg.to_zip(), headers={"Content-Type": "application/zip"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_only_an_admin_registers_and_anyone_with_a_token_lists(web, make_client, pkg) -> None:
    reader = _token(web, make_client, "system/Patient.rs")
    admin = _token(web, make_client, "system/*.rs medcloud/admin")
    body, zip_type = pkg.to_zip(), {"Content-Type": "application/zip"}
    r = web.post("/ai/models", content=body, headers={**reader, **zip_type})
    assert r.status_code == 403, r.text
    assert r.json()["issue"][0]["code"] == "forbidden"
    assert web.get("/ai/models", headers=reader).json() == {"models": []}
    r = web.post(f"/ai/models?activate=true&sha256={pkg.sha256}", content=body, headers={**admin, **zip_type})
    assert r.status_code == 201, r.text
    assert r.json()["active"] and r.json()["package_sha256"] == pkg.sha256
    assert r.headers["location"] == "/ai/models/toy-risk"
    r = web.post("/ai/models", content=body, headers={**admin, **zip_type})  # retried upload
    assert r.status_code == 200
    listed = web.get("/ai/models", headers=reader).json()["models"]
    assert [(m["name"], m["version"], m["active"]) for m in listed] == [("toy-risk", "1", True)]
    assert listed[0]["manifest"]["labels"] == pkg.manifest.labels
    one = web.get("/ai/models/toy-risk", headers=reader).json()
    assert one["active"] == "1" and len(one["versions"]) == 1
    assert web.get("/ai/models/nothing", headers=reader).status_code == 404
    trail = web.get("/fhir/AuditEvent?entity-type=AIModel&_sort=date", headers=admin).json()
    outcomes = [(e["resource"]["entity"][0]["what"].get("reference"), e["resource"]["outcomeDesc"])
                for e in trail["entry"]]
    assert outcomes == [(None, "HTTP 403 Forbidden"), ("AIModel/toy-risk@1", "HTTP 201 Created"),
                        ("AIModel/toy-risk@1", "HTTP 200 OK")]


def test_a_bad_package_is_a_400_with_the_reason(web, make_client, pkg) -> None:
    admin = _token(web, make_client, "medcloud/admin")
    files = dict(pkg.files)
    files["model.onnx"] += b"\0"
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    r = web.post("/ai/models", content=buf.getvalue(), headers=admin)
    assert r.status_code == 400
    assert "SHA-256" in r.json()["issue"][0]["diagnostics"]
    assert web.post("/ai/models", content=b"", headers=admin).status_code == 400
    r = web.post("/ai/models?sha256=" + "0" * 64, content=pkg.to_zip(), headers=admin)
    assert r.status_code == 400 and "not the expected" in r.text
    assert web.get("/ai/models", headers=admin).json() == {"models": []}
