"""DICOM de-identification (PS3.15 Annex E) under the FHIR de-identification policy."""

from __future__ import annotations

import base64
import dataclasses
import io
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, generate_uid
from typer.testing import CliRunner

from medcloud.cli import app
from medcloud.security.deid.dicom import BurnedInRefused, deidentify_bytes, resolve, table_code
from medcloud.security.deid.fhir import DeidContext, deidentify
from medcloud.security.deid.policy import DeidPolicy, DicomOptions, MaskRule

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "imaging"))
from _factory import TEST_FILES, instance  # noqa: E402

KEY = b"0123456789abcdef0123456789abcdef"
POLICY = DeidPolicy.safe_harbor(KEY)
SHIFT = POLICY.with_actions(dates="shift")


def _read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def _write(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _walk(ds: Dataset) -> Iterator[Any]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def _values(ds: Dataset) -> set[str]:
    out: set[str] = set()
    for elem in _walk(ds):
        if elem.VR in ("SQ", "OB", "OW", "UN") or elem.value is None:
            continue
        for v in elem.value if elem.VM > 1 else [elem.value]:
            out.add(str(v))
    return out


def _sample_files() -> list[Path]:
    out = []
    for p in sorted(TEST_FILES.glob("*.dcm")):
        try:
            ds = _read(p.read_bytes())
        except Exception:  # noqa: BLE001 - files without a preamble/meta are not Part-10
            continue
        if "SOPInstanceUID" in ds and "StudyInstanceUID" in ds:
            out.append(p)
    return out


SAMPLES = _sample_files()


def test_table_e11_is_complete_and_carries_the_option_columns() -> None:
    from medcloud.security.deid._dicom_profile import ATTRIBUTES, EDITION

    assert EDITION == "2026c" and len(ATTRIBUTES) > 600
    assert table_code(0x00100010, ()) == "Z"  # Patient's Name
    assert table_code(0x0020000D, ()) == "U"  # Study Instance UID
    assert table_code(0x00080020, ()) == "Z"  # Study Date: Basic
    assert table_code(0x00080020, ("full_dates",)) == "K"
    assert table_code(0x00080020, ("modified_dates",)) == "C"
    assert table_code(0x00081030, ()) == "X" and table_code(0x00081030, ("clean_descriptors",)) == "C"
    assert table_code(0x00081140, ()) == "X/Z/U*"  # Referenced Image Sequence
    assert table_code(0x60123000, ()) == "X"  # Overlay Data, a repeating group
    assert table_code(0x00080060, ()) is None  # Modality: not in the table, kept


def test_combined_codes_resolve_to_d_for_type_1_z_where_allowed_else_x() -> None:
    assert resolve("X/Z", 0x00080022) == "Z"
    assert resolve("X/D", 0x00080021) == "X"  # Series Date: type 3 everywhere
    assert resolve("Z/D", 0x00080023) == "D"  # Content Date: type 1 in SR documents
    assert resolve("X/Z/D", 0x00080080) == "Z"  # Institution Name
    assert resolve("X/Z/U*", 0x00081140) == "U"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the odd values of its own test files
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_no_attribute_the_profile_removes_or_replaces_survives(path: Path) -> None:
    data = path.read_bytes()
    original = _read(data)
    policy = dataclasses.replace(POLICY, dicom=DicomOptions(burned_in="mask", mask_top_rows=2))
    try:
        result = deidentify_bytes(data, policy)
    except BurnedInRefused as e:
        assert "cannot decode" in e.message  # only a codec gap may stop a masked run
        return
    out = _read(result.data)
    kept_values = set()
    secret: set[str] = set()
    for elem in _walk(original):
        code = table_code(int(elem.tag), ())
        if elem.VR in ("SQ", "OB", "OW", "UN") or elem.value in (None, ""):
            continue
        values = {str(v) for v in (elem.value if elem.VM > 1 else [elem.value])}
        if code is None and not int(elem.tag) >> 16 & 1:
            kept_values |= values
        elif code is not None and code != "K":
            secret |= {v for v in values if len(v) >= 4}
    leaked = (secret - kept_values) & _values(out)
    assert not leaked, f"{path.name}: {sorted(leaked)[:5]}"
    for elem in _walk(out):
        tag = int(elem.tag)
        assert not tag >> 16 & 1, f"private {elem.tag} survived"
        assert not (0x5000 <= tag >> 16 <= 0x50FF or 0x6000 <= tag >> 16 <= 0x60FF), "curve/overlay survived"
        code = table_code(tag, ())
        if code == "X":
            pytest.fail(f"{elem.tag} {elem.keyword} should have been removed")
    assert out.PatientIdentityRemoved == "YES"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != original.SOPInstanceUID
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def _study(n: int = 3) -> tuple[list[bytes], dict[str, str]]:
    """n instances of one study; instance i>0 references instance 0 inside sequences."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(n)]
    out = []
    for i, sop in enumerate(sops):
        ds = _read(instance(study=study, series=series, sop=sop, patient_id="MRN123", patient_name="Doe^John",
                            instance_number=i + 1))
        ds.FrameOfReferenceUID = frame
        ds.add_new(0x00091010, "LO", "private secret")  # no creator: plainly private
        if i:
            ref = Dataset()
            ref.ReferencedSOPClassUID = ds.SOPClassUID
            ref.ReferencedSOPInstanceUID = sops[0]
            ds.ReferencedImageSequence = Sequence([ref])
            src = Dataset()
            src.ReferencedSOPClassUID = ds.SOPClassUID
            src.ReferencedSOPInstanceUID = sops[0]
            ds.SourceImageSequence = Sequence([src])
        out.append(_write(ds))
    return out, {"study": study, "series": series, "frame": frame, "sop0": sops[0]}


def test_uids_remap_consistently_across_a_study_its_references_and_runs() -> None:
    files, uids = _study()
    first = [_read(deidentify_bytes(f, POLICY).data) for f in files]
    again = [_read(deidentify_bytes(f, POLICY).data) for f in files]
    other = [_read(deidentify_bytes(f, DeidPolicy.safe_harbor(b"another key, 16+ bytes")).data) for f in files]
    assert len({d.StudyInstanceUID for d in first}) == 1 and len({d.SeriesInstanceUID for d in first}) == 1
    assert len({d.FrameOfReferenceUID for d in first}) == 1
    assert len({d.SOPInstanceUID for d in first}) == 3
    new0 = first[0].SOPInstanceUID
    for d in first[1:]:
        assert d.ReferencedImageSequence[0].ReferencedSOPInstanceUID == new0
        assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == new0
    assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in first]
    assert first[0].StudyInstanceUID == POLICY.pseudonym_uid(uids["study"]) != uids["study"]
    assert first[0].StudyInstanceUID.startswith("2.25.") and len(first[0].StudyInstanceUID) <= 64
    assert {d.StudyInstanceUID for d in other}.isdisjoint({d.StudyInstanceUID for d in first})
    assert {d.SOPInstanceUID for d in other}.isdisjoint({d.SOPInstanceUID for d in first})
    assert all(0x00091010 not in d for d in first)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"])
def test_output_parses_and_keeps_pixel_data_unless_masked(name: str) -> None:
    data = (TEST_FILES / name).read_bytes()
    original = _read(data)
    out = _read(deidentify_bytes(data, POLICY).data)
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert out.PixelData == original.PixelData
    assert np.array_equal(out.pixel_array, original.pixel_array)


def test_fhir_and_dicom_pseudonyms_of_one_patient_agree() -> None:
    policy = POLICY.with_actions(names="pseudonymise")
    files, uids = _study(1)
    dicom = _read(deidentify_bytes(files[0], policy).data)
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe", "given": ["John"]}],
               "identifier": [{"system": "urn:medcloud:dicom:patient-id", "value": "MRN123"}]}
    fhir = deidentify(patient, policy, DeidContext(reference_year=2026))
    assert dicom.PatientID == fhir["identifier"][0]["value"] != "MRN123"
    assert dicom.PatientName == fhir["name"][0]["text"]
    study = {"resourceType": "ImagingStudy", "id": uids["study"], "status": "available",
             "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uids['study']}"}],
             "subject": {"reference": "Patient/p1"},
             "series": [{"uid": uids["series"], "modality": {"code": "CT"},
                         "instance": [{"uid": uids["sop0"], "sopClass": {"code": "1.2.840.10008.5.1.4.1.1.2"}}]}]}
    fhir_study = deidentify(study, policy, DeidContext(reference_year=2026))
    assert fhir_study["identifier"][0]["value"] == f"urn:oid:{dicom.StudyInstanceUID}"
    assert fhir_study["series"][0]["uid"] == dicom.SeriesInstanceUID
    assert fhir_study["series"][0]["instance"][0]["uid"] == dicom.SOPInstanceUID


def test_modified_dates_shift_by_the_fhir_offset_of_the_linked_patient() -> None:
    files, _ = _study(1)
    dicom = _read(deidentify_bytes(files[0], SHIFT, fhir_patient={"MRN123": "p1"}.get).data)
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},
           "subject": {"reference": "Patient/p1"}, "period": {"start": "2024-01-15"}}
    fhir = deidentify(enc, SHIFT, DeidContext(reference_year=2026))
    assert dicom.StudyDate == fhir["period"]["start"].replace("-", "") != "20240115"
    assert dicom.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [i.CodeValue for i in dicom.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert dicom.StudyTime == "101500"  # whole-day offsets leave times of day alone
    full = _read(deidentify_bytes(files[0], POLICY.with_actions(dates="keep")).data)
    assert full.StudyDate == "20240115" and full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    basic = _read(deidentify_bytes(files[0], POLICY).data)
    assert basic.StudyDate == "" and "PatientBirthDate" in basic and basic.PatientBirthDate == ""


def test_clean_descriptors_keep_harmless_text_and_drop_identifying_text() -> None:
    ds = _read(instance(patient_name="Doe^John", study_description="CT chest w/o contrast"))
    ds.SeriesDescription = "John Doe follow-up"
    ds.ImageComments = "call 555-123-4567"
    data = _write(ds)
    clean = dataclasses.replace(POLICY, dicom=DicomOptions(clean_descriptors=True))
    out = _read(deidentify_bytes(data, clean).data)
    assert out.StudyDescription == "CT chest w/o contrast"
    assert "SeriesDescription" not in out and "ImageComments" not in out
    assert "113105" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert "StudyDescription" not in _read(deidentify_bytes(data, POLICY).data)


def test_private_blocks_are_removed_unless_the_policy_keeps_their_creator() -> None:
    ds = _read(instance())
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "private value")
    other = ds.private_block(0x0013, "OTHER", create=True)
    other.add_new(0x01, "LO", "other value")
    data = _write(ds)
    assert not any(int(e.tag) >> 16 & 1 for e in _walk(_read(deidentify_bytes(data, POLICY).data)))
    keep = dataclasses.replace(POLICY, dicom=DicomOptions(keep_private_creators=frozenset({"ACME 1.0"})))
    out = _read(deidentify_bytes(data, keep).data)
    assert out[0x00111001].value == "private value" and 0x00131001 not in out


def test_overlays_are_removed_whole() -> None:
    data = (TEST_FILES / "examples_overlay.dcm").read_bytes()
    assert any(0x6000 <= int(e.tag) >> 16 <= 0x60FF for e in _read(data))
    out = _read(deidentify_bytes(data, POLICY).data)
    assert not any(0x6000 <= int(e.tag) >> 16 <= 0x60FF for e in out)


def test_burned_in_annotation_is_refused_by_default() -> None:
    ds = _read(instance())
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInRefused, match="BurnedInAnnotation is YES"):
        deidentify_bytes(_write(ds), POLICY)
    us = _read(instance(modality="CT"))
    us.Modality = "US"  # no flag on a modality known for burned-in text
    with pytest.raises(BurnedInRefused, match="US image"):
        deidentify_bytes(_write(us), POLICY)
    sc = (TEST_FILES / "SC_rgb_rle.dcm").read_bytes()
    with pytest.raises(BurnedInRefused, match="secondary capture"):
        deidentify_bytes(sc, POLICY)


def test_burned_in_annotation_is_masked_by_rule_and_stored_uncompressed() -> None:
    data = (TEST_FILES / "MR_small_jp2klossless.dcm").read_bytes()
    ds = _read(data)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    before = ds.pixel_array.copy()
    ds.BurnedInAnnotation = "YES"
    rule = MaskRule(str(ds.get("Manufacturer", "")), ds.Rows, ds.Columns, ((2, 1, 10, 4),))
    policy = dataclasses.replace(POLICY, dicom=DicomOptions(burned_in="mask", mask=(rule,)))
    result = deidentify_bytes(_write(ds), policy)
    out = _read(result.data)
    assert result.masked and out.BurnedInAnnotation == "NO"
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    after = out.pixel_array
    darkest = -(1 << (out.BitsStored - 1)) if out.PixelRepresentation else 0  # MR_small is signed
    assert (after[1:4, 2:10] == darkest).all()
    keep = np.ones(before.shape, bool)
    keep[1:4, 2:10] = False
    assert np.array_equal(after[keep], before[keep])
    with pytest.raises(BurnedInRefused, match="no mask region"):  # a size no rule covers
        deidentify_bytes(_write(ds), dataclasses.replace(
            policy, dicom=DicomOptions(burned_in="mask", mask=(dataclasses.replace(rule, rows=999),))))


def test_masking_uncompressed_ybr_422_decodes_to_full_resolution() -> None:
    data = (TEST_FILES / "SC_ybr_full_422_uncompressed.dcm").read_bytes()
    policy = dataclasses.replace(POLICY, dicom=DicomOptions(burned_in="mask", mask_top_rows=3))
    out = _read(deidentify_bytes(data, policy).data)
    assert out.PhotometricInterpretation == "YBR_FULL"
    assert len(out.PixelData) == out.Rows * out.Columns * 3
    assert (out.pixel_array[:3, :, 0] == 0).all()  # luminance black in the band


def test_masking_a_multiframe_rgb_top_band() -> None:
    data = (TEST_FILES / "SC_rgb_rle_2frame.dcm").read_bytes()
    before = _read(data).pixel_array
    policy = dataclasses.replace(POLICY, dicom=DicomOptions(burned_in="mask", mask_top_rows=5))
    after = _read(deidentify_bytes(data, policy).data).pixel_array
    assert after.shape == before.shape
    assert (after[:, :5] == 0).all() and np.array_equal(after[:, 5:], before[:, 5:])


def test_policy_file_dicom_table_is_parsed_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[actions]\ndates = "shift"\n[dicom]\nclean_descriptors = true\nburned_in = "mask"\n'
                    '[[dicom.mask]]\nmanufacturer = "ACME"\nrows = 512\ncolumns = 512\nrects = [[0, 0, 512, 40]]\n')
    p = DeidPolicy.load(path, key=KEY)
    assert p.dicom.clean_descriptors and p.dicom.mask[0].rects == ((0, 0, 512, 40),)
    path.write_text('[dicom]\nburned_in = "blur"\n')
    with pytest.raises(Exception, match="refuse or mask"):
        DeidPolicy.load(path, key=KEY)
    path.write_text('[dicom]\nmask_everything = true\n')
    with pytest.raises(Exception, match="dicom.mask_everything"):
        DeidPolicy.load(path, key=KEY)


# ---------------------------------------------------------------- CLI


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    p = tmp_path / "deid.key"
    p.write_text(base64.b64encode(KEY).decode())
    return p


def test_cli_deid_folder_writes_good_files_reports_refused_and_exits_1(tmp_path: Path, key_file: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "sub").mkdir(parents=True)
    files, _ = _study(2)
    (inp / "a.dcm").write_bytes(files[0])
    (inp / "sub" / "b.dcm").write_bytes(files[1])
    r = CliRunner().invoke(app, ["dicom", "deid", str(inp), "--out", str(out), "--key-file", str(key_file)])
    assert r.exit_code == 0, r.output
    written = sorted(out.rglob("*"))
    assert len([p for p in written if p.is_file()]) == 2 and not [p for p in written if p.name.endswith(".part")]
    (inp / "refused.dcm").write_bytes((TEST_FILES / "SC_rgb_rle.dcm").read_bytes())
    (inp / "junk.dcm").write_bytes(b"not dicom")
    out2 = tmp_path / "out2"
    r = CliRunner().invoke(app, ["dicom", "deid", str(inp), "--out", str(out2), "--key-file", str(key_file)])
    assert r.exit_code == 1
    assert "refused.dcm" in r.output and "secondary capture" in r.output and "junk.dcm" in r.output
    assert len([p for p in out2.rglob("*") if p.is_file()]) == 2
    r = CliRunner().invoke(app, ["dicom", "deid", str(inp), "--out", str(inp / "o"), "--key-file", str(key_file)])
    assert r.exit_code == 2 and "inside an input folder" in r.output and not (inp / "o").exists()
    r = CliRunner().invoke(app, ["dicom", "deid", str(inp), "--out", str(out2)], env={"MEDCLOUD_DEID_KEY": ""})
    assert r.exit_code == 2 and "no pseudonym key" in r.output
    r = CliRunner().invoke(app, ["dicom", "deid", str(inp), "--out", str(out2), "--key-file", str(key_file),
                                 "--policy", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2


def test_cli_export_deid_from_the_archive_links_with_fhir(services: Any, tmp_path: Path, key_file: Path) -> None:
    from medcloud.imaging.dicomweb import build_archive

    archive = build_archive(services.settings, services.db, services.fhir)
    files, uids = _study(2)
    assert all(r.stored for r in archive.store_many(files))
    fhir_id = archive.study_summary(uids["study"])["patient_fhir_id"]
    assert fhir_id
    out = tmp_path / "export"
    args = ["dicom", "export", "--out", str(out), "--key-file", str(key_file), "--policy", "date-shift",
            "--data-dir", str(services.settings.data_dir), "--db", services.settings.db_url]
    r = CliRunner().invoke(app, [*args, "--deid", "--patient", "MRN123"])
    assert r.exit_code == 0, r.output
    got = [_read(p.read_bytes()) for p in sorted(out.rglob("*.dcm"))]
    assert len(got) == 2
    assert {d.StudyInstanceUID for d in got} == {SHIFT.pseudonym_uid(uids["study"])}
    assert {d.PatientID for d in got} == {SHIFT.pseudonym("identifier", "MRN123")}
    assert {d.StudyDate for d in got} == {SHIFT.shift_date(__import__("datetime").date(2024, 1, 15),
                                                           fhir_id).strftime("%Y%m%d")}
    r = CliRunner().invoke(app, [*args])
    assert r.exit_code == 2 and "--deid" in r.output
    r = CliRunner().invoke(app, [*args, "--deid", "--study", "1.2.3.999"])
    assert r.exit_code == 1 and "1.2.3.999" in r.output
    r = CliRunner().invoke(app, [*args, "--deid", "--patient", "NOBODY"])
    assert r.exit_code == 2 and "NOBODY" in r.output
