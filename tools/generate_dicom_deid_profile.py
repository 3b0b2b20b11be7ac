"""Generate medcloud/security/deid/_dicom_profile.py: DICOM PS3.15 Table E.1-1 as a Python table.

Run (both inputs are plain wheels from PyPI, fetched with the ordinary client):

    pip download --no-deps -d /tmp/e11 dicom-anonymizer==2.1.0 dicom-standard==0.1.0
    python tools/generate_dicom_deid_profile.py /tmp/e11

No copy of Table E.1-1 that is both current and carries every option column is published as a
package, so two machine-readable copies are merged:

- Basic Profile column, every row: ``dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py``
  in dicom-anonymizer 2.1.0 (KitwareMedical/dicom-anonymizer, BSD-3-Clause), the PS3.15 2026c table
  split into one list of tags per action code (D_TAGS, Z_TAGS, X_TAGS, U_TAGS, Z_D_TAGS, X_Z_TAGS,
  X_D_TAGS, X_Z_D_TAGS, X_Z_U_STAR_TAGS; repeating groups as (group, element, group mask, element mask)).
  It is parsed with ``ast``, never imported.
- Option columns (Retain Longitudinal Temporal Information with Full Dates / Modified Dates, Clean
  Descriptors, and the others for completeness): ``standard/confidentiality_profile_attributes.json`` in
  the dicom-standard 0.1.0 wheel (innolitics/dicom-standard, MIT; parsed from the 2020 edition).
- Rows added to the standard since 2020 have no option cells in that copy. For the two temporal
  options the standard's own pattern is used (checked against every 2020 row): each DA, DT or TM
  attribute of the table is K (Full Dates) / C (Modified Dates), except Patient's Birth Date/Time
  (a patient characteristic) and the GPS group (0016,xxxx). Newer rows get no Clean Descriptors cell,
  so the Basic Profile action stays in force for them: stricter, never weaker.
"""

from __future__ import annotations

import ast
import contextlib
import json
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "medcloud" / "security" / "deid" / "_dicom_profile.py"
ANON = ("dicom_anonymizer-2.1.0-py3-none-any.whl",
        "dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py")
STD = ("dicom_standard-0.1.0-py3-none-any.whl",
       "dicom_standard-0.1.0.data/data/standard/confidentiality_profile_attributes.json")
LISTS = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
         "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
OPTIONS = {"rtnLongFullDatesOpt": "full_dates", "rtnLongModifDatesOpt": "modified_dates",
           "cleanDescOpt": "clean_descriptors", "rtnUIDsOpt": "retain_uids", "rtnDevIdOpt": "retain_device",
           "rtnInstIdOpt": "retain_institution", "rtnPatCharsOpt": "retain_patient_characteristics",
           "cleanStructContOpt": "clean_structured_content", "cleanGraphOpt": "clean_graphics",
           "rtnSafePrivOpt": "retain_safe_private"}
COLUMNS = ("basic", *OPTIONS.values())
BIRTH = {0x00100030, 0x00100032}


def _read(folder: Path, wheel: str, member: str) -> str:
    with zipfile.ZipFile(folder / wheel) as z:
        return z.read(member).decode()


def basic_rows(source: str) -> tuple[dict[int, tuple[str, str]], list[tuple[int, int, str, str]]]:
    """tag -> (name, code); and masked rows (tag, mask, name, code) from the per-action lists."""
    tree = ast.parse(source)
    lines = source.splitlines()
    plain: dict[int, tuple[str, str]] = {}
    masked: list[tuple[int, int, str, str]] = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in LISTS and isinstance(node.value, ast.List)):
            continue
        code = LISTS[node.targets[0].id]
        for item in node.value.elts:
            assert isinstance(item, ast.Tuple)
            nums = [ast.literal_eval(e) for e in item.elts]
            text = " ".join(lines[item.lineno - 1:(item.end_lineno or item.lineno) + 1])
            name = text.split("#", 1)[1].split("#")[0].strip().split("  ")[0]
            if len(nums) == 2:
                tag = nums[0] << 16 | nums[1]
                assert tag not in plain, f"{tag:08X} listed twice"
                plain[tag] = (name, code)
            else:
                g, e, gm, em = nums
                masked.append((g << 16 | e, gm << 16 | em, name, code))
    return plain, masked


def option_cells(raw: str) -> dict[str, dict[str, str]]:
    """'ggggeeee' (lower hex, x for repeating digits) -> {column: code} from the innolitics JSON."""
    out: dict[str, dict[str, str]] = {}
    for row in json.loads(raw):
        out[row["id"].lower()] = {col: row[k] for k, col in OPTIONS.items() if k in row}
    return out


def main(folder: Path) -> None:
    from pydicom.datadict import dictionary_description, dictionary_VR

    plain, masked = basic_rows(_read(folder, *ANON))
    cells = option_cells(_read(folder, *STD))
    rows: dict[int, tuple[str, ...]] = {}
    derived = 0
    for tag, (name, basic) in sorted(plain.items()):
        with contextlib.suppress(KeyError):
            name = dictionary_description(tag)  # the source's comments carry the odd typo
        opts = cells.get(f"{tag:08x}")
        if opts is None:
            opts = {}
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = ""
            if vr in ("DA", "DT", "TM") and tag not in BIRTH and tag >> 16 != 0x0016:
                opts = {"full_dates": "K", "modified_dates": "C"}
                derived += 1
        rows[tag] = (name, basic, *(opts.get(c, "") for c in COLUMNS[1:]))
    mrows = []
    for tag, mask, name, basic in masked:
        key = f"{tag:08x}"
        key = (key[:2] + "xx" + (key[4:] if mask & 0xFFFF else "xxxx"))
        opts = cells.get(key, {})
        mrows.append((tag, mask, name, basic, *(opts.get(c, "") for c in COLUMNS[1:])))
    body = [
        '# generated by tools/generate_dicom_deid_profile.py from dicom-anonymizer 2.1.0 dicomfields_2026c.py',
        '# (PS3.15 2026c Basic Profile) and dicom-standard 0.1.0 confidentiality_profile_attributes.json',
        '# (option columns, 2020 edition); do not edit. See the generator for how the two are merged.',
        '"""DICOM PS3.15 Annex E Table E.1-1: action codes per attribute, per profile/option column."""',
        "",
        'EDITION = "2026c"',
        f"COLUMNS = {COLUMNS!r}",
        f"# options for {derived} rows newer than 2020 derived from their VR (DA/DT/TM -> K/C), see the generator",
        "# tag -> (name, basic, *options in COLUMNS[1:] order); '' = the option does not change the row",
        "ATTRIBUTES: dict[int, tuple[str, ...]] = {",
    ]
    for tag, row in rows.items():
        body.append(f"    0x{tag:08X}: {row!r},")
    body.append("}")
    body.append("# repeating groups and ranges: (tag, mask, name, basic, *options); matches when tag & mask == tag")
    body.append("MASKED: tuple[tuple[int, int, str, str, str, str, str, str, str, str, str, str, str, str], ...] = (")
    for mtag, mmask, *rest in mrows:
        body.append(f"    (0x{mtag:08X}, 0x{mmask:08X}, " + ", ".join(repr(x) for x in rest) + "),")
    body.append(")")
    OUT.write_text("\n".join(body) + "\n")
    print(f"{OUT}: {len(rows)} attributes, {len(mrows)} masked rows, {derived} option rows derived")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
