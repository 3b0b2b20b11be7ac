"""A tagged set of Synthea patients: every identifier value, by HIPAA Safe Harbor class, and the search for survivors.

45 CFR §164.514(b)(2)(i) lists 18 classes, (A) to (R). Synthea fills most of them (names,
addresses, dates, phone, e-mail, SSN, MRN, driver's licence, passport, resource ids, device
UDIs, narratives); ``tag_patients`` adds to each patient what Synthea leaves out (fax, URL, IP
address, health plan and account numbers, a vehicle number, a photo, a fingerprint image, a
narrative naming the patient, an age over 89), so every class has values to look for.
"""

from __future__ import annotations

import base64
import copy
import re
from collections import defaultdict
from typing import Any

import orjson

from medcloud.fhir.indexing._element_types import TYPES

CLASSES = {
    "A": "names", "B": "geography below state", "C": "dates (not year) and ages > 89", "D": "telephone numbers",
    "E": "fax numbers", "F": "e-mail addresses", "G": "social security numbers", "H": "medical record numbers",
    "I": "health plan beneficiary numbers", "J": "account numbers", "K": "certificate/licence numbers",
    "L": "vehicle identifiers", "M": "device identifiers and serial numbers", "N": "URLs", "O": "IP addresses",
    "P": "biometric identifiers", "Q": "full-face photographs", "R": "any other unique identifying number",
}
_V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_ID_CLASS = {"SS": "G", "MR": "H", "SN": "I", "MB": "I", "AN": "J", "DL": "K", "PPN": "K", "NPI": "R"}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode() * 3).decode()


def tag_patients(bundle: dict[str, Any], n: int) -> dict[str, Any]:
    """A copy of a Synthea Bundle with the classes Synthea does not fill added to its Patient."""
    b = copy.deepcopy(bundle)
    patient = next(e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "Patient")
    pid = next(e["fullUrl"] for e in b["entry"] if e["resource"] is patient)
    patient["telecom"] = [*patient.get("telecom", []),
                          {"system": "fax", "value": f"617-55{n}-0199"},
                          {"system": "url", "value": f"https://home.example.org/~patient{n}x"}]
    patient["identifier"] += [
        {"type": {"coding": [{"system": _V2, "code": "SN"}]}, "system": "urn:plan", "value": f"HPB{n}77123456"},
        {"type": {"coding": [{"system": _V2, "code": "AN"}]}, "system": "urn:acct", "value": f"ACCT{n}0045611"},
    ]
    patient["photo"] = [{"contentType": "image/png", "data": _b64(f"full-face photo of patient {n}"), "url": f"https://img.example.org/face{n}.png"}]
    patient["text"] = {"status": "generated",
                       "div": f'<div xmlns="http://www.w3.org/1999/xhtml">Narrative for Zorblatt{n} Quimbyfield</div>'}
    if n == 0:
        patient["birthDate"] = "1925-03-14"  # older than 89 at the reference year
    b["entry"].append({"fullUrl": f"urn:uuid:0000000{n}-feed-4bee-8000-00000000000{n}", "resource": {
        "resourceType": "Observation", "id": f"0000000{n}-feed-4bee-8000-00000000000{n}", "status": "final",
        "code": {"text": "note"}, "subject": {"reference": pid},
        "note": [{"text": f"Called from 10.20.{n}.77 about vehicle VIN 1HGCM8263{n}A004352 and pacemaker SN PM-{n}99812"}],
    }, "request": {"method": "POST", "url": "Observation"}})
    b["entry"].append({"fullUrl": f"urn:uuid:2000000{n}-feed-4bee-8000-00000000000{n}", "resource": {
        "resourceType": "Media", "id": f"2000000{n}-feed-4bee-8000-00000000000{n}", "status": "completed",
        "subject": {"reference": pid}, "content": {"contentType": "image/png", "data": _b64(f"fingerprint image of patient {n}")},
    }, "request": {"method": "POST", "url": "Media"}})
    b["entry"].append({"fullUrl": f"urn:uuid:1000000{n}-feed-4bee-8000-00000000000{n}", "resource": {
        "resourceType": "Device", "id": f"1000000{n}-feed-4bee-8000-00000000000{n}", "patient": {"reference": pid},
        "serialNumber": f"PM-{n}99812", "lotNumber": f"LOT{n}55123",
        "udiCarrier": [{"deviceIdentifier": f"0884{n}521000011", "carrierHRF": f"(01)0884{n}521000011(21)PM-{n}99812"}],
    }, "request": {"method": "POST", "url": "Device"}})
    return b


def as_stored(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The Bundle's resources with ``urn:uuid`` references rewritten to ``Type/id`` (as a server stores them)."""
    urls = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (urls.get(v, v) if k == "reference" and isinstance(v, str) else fix(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    return [fix(e["resource"]) for e in bundle["entry"]]


def collect(resources: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Every identifying value of the original resources, by Safe Harbor letter (plus "narrative")."""
    tags: dict[str, set[str]] = defaultdict(set)
    for r in resources:
        _walk(r, "Resource", tags)
    return tags


def _walk(value: Any, ftype: str, tags: dict[str, set[str]], path: str = "") -> None:
    if isinstance(value, list):
        for v in value:
            _walk(v, ftype, tags, path)
        return
    if ftype in ("date", "dateTime", "instant") and isinstance(value, str) and len(value) >= 7:
        tags["C"].add(value[:10] if len(value) >= 10 else value)
        return
    if ftype in ("string", "markdown") and isinstance(value, str):
        for ip in re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", value):
            tags["O"].add(ip)
        tags["L"].update(re.findall(r"\b[A-HJ-NPR-Z0-9]{17}\b", value))
        return
    if not isinstance(value, dict):
        return
    if ftype == "Resource":
        ftype = value.get("resourceType", "")
        if isinstance(value.get("id"), str):
            tags["R"].add(value["id"])
        if isinstance(value.get("text"), dict) and "Zorblatt" in value["text"].get("div", ""):
            tags["narrative"].add(re.sub(r"<[^>]+>", "", value["text"]["div"]))
        if ftype == "Patient" and value.get("birthDate", "9999") < "1935":
            tags["C"].add("age>89:" + value["birthDate"][:4])
        if ftype == "Device":
            for k in ("serialNumber", "lotNumber"):
                if isinstance(value.get(k), str):
                    tags["M"].add(value[k])
    if ftype == "HumanName":
        for k in ("family", "given", "text"):
            for s in value.get(k) if isinstance(value.get(k), list) else [value.get(k)]:
                if isinstance(s, str):
                    tags["A"].update(w for w in re.split(r"\s+", s) if len(w) > 3)
    elif ftype == "Address":
        for k in ("line", "city", "district", "postalCode", "text"):
            for s in value.get(k) if isinstance(value.get(k), list) else [value.get(k)]:
                if isinstance(s, str) and s != "00000":
                    tags["B"].add(s)
        for ext in value.get("extension", []):
            for sub in ext.get("extension", []):
                if "valueDecimal" in sub:
                    tags["B"].add(repr(sub["valueDecimal"]))
    elif ftype == "ContactPoint" and isinstance(value.get("value"), str):
        letter = {"phone": "D", "sms": "D", "fax": "E", "email": "F", "url": "N"}.get(value.get("system", ""), "D")
        tags[letter].add(value["value"])
    elif ftype == "Identifier" and isinstance(value.get("value"), str):
        codes = [c.get("code") for c in (value.get("type") or {}).get("coding", [])]
        letter = next((_ID_CLASS[c] for c in codes if c in _ID_CLASS), "R")
        if value.get("system") == "http://hl7.org/fhir/sid/us-ssn":
            letter = "G"
        tags[letter].add(value["value"])
    elif ftype == "Attachment":
        if isinstance(value.get("url"), str):
            tags["N"].add(value["url"])
        if isinstance(value.get("data"), str):
            tags["Q" if path.endswith("photo") else "P"].add(value["data"][-40:])
    elif ftype == "DeviceUdiCarrier" or path.endswith("udiCarrier"):
        for k in ("deviceIdentifier", "carrierHRF"):
            if isinstance(value.get(k), str):
                tags["M"].add(value[k])
    props = TYPES.get(ftype, {})
    for k, v in value.items():
        if k in props:
            _walk(v, props[k], tags, f"{ftype}.{k}")


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def terminology(resources: list[dict[str, Any]]) -> set[str]:
    """``Coding.display`` labels of the originals: "Brown color (qualifier value)" is a SNOMED term, not Ms Brown."""
    return set(re.findall(r'"display": ?"([^"]*)"', "".join(orjson.dumps(r).decode() for r in resources)))


def survivors(tags: dict[str, set[str]], text: str, patients_out: list[dict[str, Any]], reference_year: int,
              labels: set[str] = frozenset()) -> dict[str, list[str]]:  # type: ignore[assignment]
    """Tagged values found in the de-identified output ``text``, by class (empty = nothing left).

    Terminology labels of the input (``labels``) are blanked first: a code's display text that
    the input already carried is not an identifier.
    """
    text = re.sub(r'"display": ?"([^"]*)"', lambda m: '"display":""' if m.group(1) in labels else m.group(0), text)
    uuids = set(_UUID.findall(text))
    dates = set(re.findall(r"\d{4}-\d{2}(?:-\d{2})?", text))
    out: dict[str, list[str]] = {}
    for cls, values in tags.items():
        left = []
        for v in values:
            if v.startswith("age>89:"):
                years = {int(p["birthDate"][:4]) for p in patients_out if "birthDate" in p}
                if any(reference_year - y > 90 for y in years) or v[7:] in {str(y) for y in years}:
                    left.append(v)
            elif cls == "C":
                if v in dates or v[:7] in dates:
                    left.append(v)
            elif _UUID.fullmatch(v):
                if v in uuids:
                    left.append(v)
            elif v in text and (len(v) > 12 or re.search(rf"(?<![\w.-]){re.escape(v)}(?![\w-])", text)):
                left.append(v)
        if left:
            out[cls] = sorted(left)[:5]
    return out


def report(tags: dict[str, set[str]], left: dict[str, list[str]]) -> str:
    checked = ", ".join(f"{c}:{len(tags.get(c, ()))}" for c in [*CLASSES, "narrative"])
    classes_left = sum(1 for c in CLASSES if c in left)
    return f"{classes_left} of 18 classes left (values checked per class: {checked})"
