"""The model registry on SQLite and PostgreSQL: versions, one active version per name, checked loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from medcloud.ai.package import ChecksumMismatch
from medcloud.ai.registry import Registry
from medcloud.errors import Conflict, NotFound
from medcloud.storage.ai_schema import ai_model_packages
from medcloud.storage.migrate import upgrade
from medcloud.storage.sql.database import Database

from ._models import image_package, tabular_package


@pytest.fixture(scope="module")
def v1():
    return tabular_package(version="1", seed=0)


@pytest.fixture(scope="module")
def v2():
    return tabular_package(version="2", seed=1)


@pytest.fixture
def registry(backend: str):
    db = Database.connect(backend)
    upgrade(db)
    clock = iter(range(1_700_000_000, 1_800_000_000))
    yield Registry(db, clock=lambda: float(next(clock)))
    db.dispose()


def test_register_list_activate_and_load(registry: Registry, v1, v2) -> None:
    first = registry.register(v1)
    assert (first.name, first.version, first.active) == ("toy-risk", "1", False)
    with pytest.raises(NotFound, match="has no active version"):
        registry.get("toy-risk")
    registry.activate("toy-risk", "1")
    second = registry.register(v2, activate=True, by="admin")
    assert second.active and second.registered_by == "admin"
    listed = registry.list()
    assert [(v.version, v.active) for v in listed] == [("2", True), ("1", False)]  # newest first, one active
    assert registry.get("toy-risk").version == "2"
    loaded = registry.load("toy-risk")
    assert loaded.sha256 == v2.sha256 == second.package_sha256
    assert loaded.model == v2.model
    assert registry.load("toy-risk", "1").model == v1.model
    registry.activate("toy-risk", "1")
    assert [v.version for v in registry.list("toy-risk") if v.active] == ["1"]
    assert registry.next_version("toy-risk") == "3"
    assert registry.next_version("new-model") == "1"


def test_names_are_independent(registry: Registry, v1) -> None:
    registry.register(v1, activate=True)
    registry.register(image_package(), activate=True)
    assert {v.name for v in registry.list() if v.active} == {"toy-risk", "chest-xray-toy"}
    assert registry.get("chest-xray-toy").manifest["input"]["kind"] == "image"


def test_a_taken_version_is_a_conflict_unless_it_is_the_same_package(registry: Registry, v1) -> None:
    registry.register(v1)
    again = registry.register(v1, activate=True)  # a retried upload: same bytes, no error
    assert again.active
    other = tabular_package(version="1", seed=5)
    with pytest.raises(Conflict, match="already registered with another package"):
        registry.register(other)
    assert registry.load("toy-risk", "1").sha256 == v1.sha256


def test_remove_refuses_the_active_version_unless_forced(registry: Registry, v1, v2) -> None:
    registry.register(v1)
    registry.register(v2, activate=True)
    registry.remove("toy-risk", "1")
    assert [v.version for v in registry.list()] == ["2"]
    with pytest.raises(Conflict, match="active version"):
        registry.remove("toy-risk", "2")
    registry.remove("toy-risk", "2", force=True)
    assert registry.list() == []
    with pytest.raises(NotFound, match="no model named toy-risk"):
        registry.load("toy-risk")
    with pytest.raises(NotFound):
        registry.remove("toy-risk", "2")
    with pytest.raises(NotFound):
        registry.activate("toy-risk", "9")


def test_a_package_changed_in_the_database_is_refused_on_load(registry: Registry, v1) -> None:
    registry.register(v1, activate=True)
    data = bytearray(v1.to_zip())
    data[100] ^= 1
    with registry.db.write() as conn:
        conn.execute(update(ai_model_packages).values(data=bytes(data)))
    with pytest.raises(ChecksumMismatch, match="registry's copy was changed"):
        registry.load("toy-risk")


def test_cli_register_activate_list_and_remove(tmp_path: Path, v1, v2) -> None:
    import json

    from typer.testing import CliRunner

    from medcloud.cli import app

    runner = CliRunner()
    v1.write_dir(tmp_path / "v1")
    (tmp_path / "v2.zip").write_bytes(v2.to_zip())
    store = ["--data-dir", str(tmp_path / "data")]
    r = runner.invoke(app, ["ai", "register", str(tmp_path / "v1"), "--activate", *store])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["ai", "register", str(tmp_path / "v2.zip"), "--sha256", "0" * 64, *store])
    assert r.exit_code == 1 and "is not the expected" in r.output
    r = runner.invoke(app, ["ai", "register", str(tmp_path / "v2.zip"), "--sha256", v2.sha256, *store])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["ai", "activate", "toy-risk", "2", *store])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["ai", "models", "--json", *store])
    assert r.exit_code == 0, r.output
    assert [(v["version"], v["active"]) for v in json.loads(r.stdout)] == [("2", True), ("1", False)]
    r = runner.invoke(app, ["ai", "remove", "toy-risk", "2", *store])
    assert r.exit_code == 1 and "active version" in r.output
    r = runner.invoke(app, ["ai", "remove", "toy-risk", "1", *store])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["ai", "register", str(tmp_path / "missing.zip"), *store])
    assert r.exit_code == 1 and "no such file" in r.output
