"""The runtime: batched predictions, occlusion maps, corrupt packages, and ``medcloud ai predict``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from medcloud.ai.package import ChecksumMismatch
from medcloud.ai.registry import Registry
from medcloud.ai.runtime import Runtime, overlay, png
from medcloud.cli import app
from medcloud.storage.ai_schema import ai_model_packages
from medcloud.storage.migrate import upgrade
from medcloud.storage.sql.database import Database

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "imaging"))

from _tiny import SIZE, png_bytes, tiny_package  # noqa: E402


@pytest.fixture
def registry(backend: str):
    db = Database.connect(backend)
    upgrade(db)
    reg = Registry(db)
    reg.register(tiny_package(), activate=True)
    yield reg
    db.dispose()


def _inputs(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.random((n, 1, SIZE, SIZE), dtype=np.float32)


def test_predict_is_batched_and_independent_of_batch_size(registry: Registry) -> None:
    model = Runtime(registry, threads=1).model("tiny-ct")
    x = _inputs(11)
    one = model.predict(x, batch=1)
    many = model.predict(x, batch=4)
    assert one.shape == (11, 2)
    np.testing.assert_allclose(one.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(one, many, rtol=1e-5)
    bright = np.zeros((1, 1, SIZE, SIZE), dtype=np.float32)
    bright[..., : SIZE // 2, : SIZE // 2] = 1.0
    assert model.predict(bright)[0, 1] > 0.99  # the top-left quadrant drives "abnormal"


def test_sessions_are_cached_per_version_and_digest(registry: Registry) -> None:
    rt = Runtime(registry)
    assert rt.model("tiny-ct") is rt.model("tiny-ct", "1")
    registry.register(tiny_package(version="2"), activate=True)
    assert rt.model("tiny-ct").version == "2"
    rt.clear()  # losing the cache costs a load, nothing else
    assert rt.model("tiny-ct", "1").version == "1"


def test_wrong_input_shape_is_a_clear_error(registry: Registry) -> None:
    from medcloud.errors import Invalid

    with pytest.raises(Invalid, match=r"shape \(N, 1, 16, 16\)"):
        Runtime(registry).model("tiny-ct").predict(np.zeros((2, 3, SIZE, SIZE), dtype=np.float32))


def test_a_package_changed_in_the_store_is_refused_on_load(registry: Registry) -> None:
    good = registry.load("tiny-ct").to_zip()
    tampered = good[:200] + bytes([good[200] ^ 0x01]) + good[201:]  # one bit flipped on disk
    with registry.db.write() as conn:
        conn.execute(update(ai_model_packages).values(data=tampered))
    with pytest.raises(ChecksumMismatch, match="does not match its digest"):
        Runtime(registry).model("tiny-ct")


def test_occlusion_map_points_at_the_region_that_drives_the_class(registry: Registry) -> None:
    model = Runtime(registry).model("tiny-ct")
    x = np.zeros((1, SIZE, SIZE), dtype=np.float32)
    x[:, : SIZE // 2, : SIZE // 2] = 1.0
    ex = model.explain(x)
    assert ex.label == "abnormal"
    assert ex.heatmap.shape == (SIZE, SIZE) and ex.heatmap.max() == pytest.approx(1.0)
    h = SIZE // 2
    assert ex.heatmap[:h, :h].mean() > 5 * ex.heatmap[h:, h:].mean()
    picture = overlay(np.zeros((40, 40), dtype=np.float32), ex.heatmap)
    assert picture.shape == (40, 40, 3) and picture.dtype == np.uint8
    assert picture[:10, :10].sum() > picture[30:, 30:].sum()
    assert png(picture)[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_predict_reports_each_file_and_a_bad_one_does_not_stop_the_batch(tmp_path: Path) -> None:
    from _factory import instance

    pkg_dir = tmp_path / "pkg"
    tiny_package().write_dir(pkg_dir)
    (tmp_path / "sick.png").write_bytes(png_bytes(True))
    (tmp_path / "fine.png").write_bytes(png_bytes(False))
    (tmp_path / "ct.dcm").write_bytes(instance(rows=SIZE, columns=SIZE))
    (tmp_path / "broken.dcm").write_bytes(instance(rows=SIZE, columns=SIZE)[:400])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "mr.dcm").write_bytes(instance(rows=SIZE, columns=SIZE, modality="MR"))
    files = [str(tmp_path / n) for n in ("sick.png", "broken.dcm", "fine.png", "notes.txt", "ct.dcm", "mr.dcm",
                                         "missing.png")]
    res = CliRunner().invoke(app, ["ai", "predict", "--model", str(pkg_dir), *files,
                                   "--explain", str(tmp_path / "maps"), "--batch", "2"])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    by_name = {Path(r["file"]).name: r for r in doc["results"]}
    assert [Path(r["file"]).name for r in doc["results"]] == [Path(f).name for f in files]
    assert by_name["sick.png"]["label"] == "abnormal" and by_name["fine.png"]["label"] == "normal"
    assert sum(by_name["ct.dcm"]["probabilities"].values()) == pytest.approx(1.0, rel=1e-5)
    assert "error" in by_name["broken.dcm"] and "error" in by_name["notes.txt"]
    assert "not an image" in by_name["notes.txt"]["error"]
    assert by_name["mr.dcm"]["error"].startswith("no applicable model: tiny-ct 1 applies to modality CT")
    assert "No such file" in by_name["missing.png"]["error"]
    maps = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert maps == ["ct.dcm." + by_name["ct.dcm"]["label"] + ".png", "fine.png.normal.png", "sick.png.abnormal.png"]


def test_cli_predict_by_registered_name_and_unknown_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    pkg_dir = tmp_path / "pkg"
    tiny_package().write_dir(pkg_dir)
    runner = CliRunner()
    assert runner.invoke(app, ["ai", "register", str(pkg_dir), "--activate", "--data-dir", str(data)]).exit_code == 0
    (tmp_path / "a.png").write_bytes(png_bytes(True))
    ok = runner.invoke(app, ["ai", "predict", "--model", "tiny-ct@1", str(tmp_path / "a.png"), "--data-dir", str(data)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["results"][0]["label"] == "abnormal"
    missing = runner.invoke(app, ["ai", "predict", "--model", "nope", str(tmp_path / "a.png"), "--data-dir", str(data)])
    assert missing.exit_code == 1 and "no model named nope" in missing.output


def test_cli_predict_refuses_a_package_whose_model_file_was_corrupted(tmp_path: Path) -> None:
    pkg_dir = tmp_path / "pkg"
    tiny_package().write_dir(pkg_dir)
    onnx_file = pkg_dir / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-5] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    (tmp_path / "a.png").write_bytes(png_bytes(True))
    res = CliRunner().invoke(app, ["ai", "predict", "--model", str(pkg_dir), str(tmp_path / "a.png")])
    assert res.exit_code == 1
    assert "model.onnx: SHA-256" in res.output and "does not match the manifest" in res.output
    assert "results" not in res.stdout  # nothing predicted with a corrupt model
