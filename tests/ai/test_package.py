"""Model packages: what is accepted, and each way a wrong package is refused."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from medcloud.ai import package as packages
from medcloud.ai.package import ChecksumMismatch, PackageError

from ._models import image_manifest, image_model, image_package, tabular_package


@pytest.fixture(scope="module")
def tabular() -> packages.ModelPackage:
    return tabular_package()


def _tar_gz(files: dict[str, bytes], top: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(top + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_package_reads_the_same_from_a_directory_a_zip_and_a_tar_gz(tabular, tmp_path: Path) -> None:
    tabular.write_dir(tmp_path / "pkg")
    from_dir = packages.read(tmp_path / "pkg")
    (tmp_path / "pkg.zip").write_bytes(_zip(tabular.files))
    (tmp_path / "pkg.tar.gz").write_bytes(_tar_gz(tabular.files, top="toy-risk/"))  # one top folder
    digests = {from_dir.sha256, packages.read(tmp_path / "pkg.zip").sha256,
               packages.read(tmp_path / "pkg.tar.gz").sha256}
    assert digests == {tabular.sha256}
    assert from_dir.manifest.input.kind == "tabular"
    assert [f.name for f in from_dir.manifest.input.features] == ["age", "bmi", "smoker"]
    assert packages.from_bytes(tabular.to_zip(), expected_sha256=tabular.sha256).manifest == tabular.manifest


def test_a_changed_model_is_refused_by_its_checksum(tabular) -> None:
    files = dict(tabular.files)
    files["model.onnx"] = files["model.onnx"] + b"\0"
    with pytest.raises(ChecksumMismatch, match="model.onnx: SHA-256"):
        packages.from_files(files)


def test_a_changed_model_card_is_refused_by_its_checksum(tabular) -> None:
    files = dict(tabular.files)
    files["MODEL_CARD.md"] = b"# a nicer story\n"
    with pytest.raises(ChecksumMismatch, match="MODEL_CARD.md"):
        packages.from_files(files)


def test_a_file_the_manifest_does_not_list_is_refused(tabular) -> None:
    with pytest.raises(PackageError, match="not listed in the manifest: extra.bin"):
        packages.from_files({**tabular.files, "extra.bin": b"x"})


def test_the_package_digest_must_be_the_expected_one(tabular) -> None:
    with pytest.raises(ChecksumMismatch, match="is not the expected"):
        packages.from_bytes(tabular.to_zip(), expected_sha256="0" * 64)


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.pop("licence"), "licence: Field required"),
    (lambda m: m.update(name="Not A Name!"), "name: String should match"),
    (lambda m: m.update(task="segmentation"), "task"),
    (lambda m: m.update(labels=["yes", "yes"]), "labels must be distinct"),
    (lambda m: m.update(surprise=1), "surprise: Extra inputs are not permitted"),
    (lambda m: m["training_data"].update(fingerprint="abc"), "training_data.fingerprint"),
])
def test_a_wrong_manifest_is_refused_naming_the_field(tabular, change, message) -> None:
    manifest = json.loads(tabular.files["manifest.json"])
    change(manifest)
    with pytest.raises(PackageError, match=message):
        packages.from_files({**tabular.files, "manifest.json": json.dumps(manifest).encode()})


def test_a_manifest_that_is_not_json_or_missing_is_refused(tabular) -> None:
    with pytest.raises(PackageError, match="not JSON"):
        packages.from_files({**tabular.files, "manifest.json": b"{nope"})
    files = dict(tabular.files)
    del files["manifest.json"]
    with pytest.raises(PackageError, match="manifest.json is missing"):
        packages.from_files(files)


def test_tabular_features_must_match_the_model_inputs(tabular) -> None:
    manifest = json.loads(tabular.files["manifest.json"])
    manifest["input"]["features"][0]["input"] = "age_in_years"
    with pytest.raises(PackageError, match="no input 'age_in_years'") as err:
        packages.from_files({**tabular.files, "manifest.json": json.dumps(manifest).encode()})
    assert "inputs the manifest does not describe: age" in str(err.value)
    manifest = json.loads(tabular.files["manifest.json"])
    manifest["input"]["features"][2]["type"] = "number"  # smoker is a string input in the ONNX model
    with pytest.raises(PackageError, match="'smoker' is number but input 'smoker' has ONNX element type 8"):
        packages.from_files({**tabular.files, "manifest.json": json.dumps(manifest).encode()})


def test_the_labels_must_match_the_probabilities_output(tabular) -> None:
    manifest = json.loads(tabular.files["manifest.json"])
    manifest["labels"] = ["low", "mid", "high"]
    with pytest.raises(PackageError, match="has 3 labels"):
        packages.from_files({**tabular.files, "manifest.json": json.dumps(manifest).encode()})


def test_an_image_model_of_the_declared_shape_is_accepted() -> None:
    pkg = image_package()
    assert pkg.manifest.input.kind == "image"
    assert pkg.manifest.applies_to.modalities == ["CR", "DX"]


@pytest.mark.parametrize(("input_spec", "message"), [
    ({"size": [16, 16]}, "axis 2: 8 != 16"),
    ({"channels": 3, "normalisation": {"mean": [0, 0, 0], "std": [1, 1, 1]}}, "axis 1: 1 != 3"),
    ({"layout": "NHWC"}, "NHWC"),
    ({"name": "pixels"}, "not the one image input 'pixels'"),
])
def test_an_image_model_whose_shape_differs_from_the_manifest_is_refused(input_spec, message) -> None:
    manifest = image_manifest()
    manifest["input"] = {**manifest["input"], **input_spec}
    with pytest.raises(PackageError, match=message):
        packages.build(manifest, image_model(), "# card\n")


def test_bytes_that_are_not_onnx_are_refused() -> None:
    with pytest.raises(PackageError, match="not a valid ONNX model"):
        packages.build(image_manifest(), b"definitely not protobuf \xff\xff", "# card\n")


def test_archives_with_unsafe_paths_or_no_archive_at_all_are_refused(tabular) -> None:
    with pytest.raises(PackageError, match="unsafe path"):
        packages.from_bytes(_zip({**tabular.files, "../escape.txt": b"x"}))
    with pytest.raises(PackageError, match="expected a .zip or .tar.gz"):
        packages.from_bytes(b"hello")
    with pytest.raises(PackageError, match="no such file"):
        packages.read(Path("/nonexistent/package.zip"))
