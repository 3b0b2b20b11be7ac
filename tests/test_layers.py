"""Dependency direction (STYLE.md §7): edges depend on the domain, never the other way round."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "medcloud"

WEB = ("starlette", "fastapi", "uvicorn")
DRIVERS = ("psycopg", "sqlite3", "psycopg2")
EDGE_FILES = {"app.py", "cli.py", "http.py", "dicomweb.py", "dimse.py", "hooks.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_domain_modules_do_not_import_the_web_framework_or_db_drivers(path: Path) -> None:
    if path.name in EDGE_FILES or path.parent.name == "cli" or path.name.endswith("cli.py"):
        return
    bad = {m for m in _imports(path) if m.split(".")[0] in WEB + DRIVERS}
    assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}; only edges may"


@pytest.mark.parametrize("path", sorted((PKG / "storage").rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_storage_does_not_depend_on_fhir_or_edges(path: Path) -> None:
    bad = {m for m in _imports(path) if m.startswith(("medcloud.fhir", "medcloud.app", "medcloud.cli"))}
    assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"
