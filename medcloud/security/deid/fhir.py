"""De-identify any FHIR R4 resource (Bundles included) under a ``DeidPolicy``.

The walk is driven by element types (the generated R4 element table the indexer uses), so every
HumanName, Address, ContactPoint, Identifier, date, Attachment... is found wherever it sits,
including extensions and contained resources. Elements the R4 schema does not define are dropped.

Safe Harbor classes (45 CFR §164.514(b)(2)(i)) and what happens to them by default:

    (A) names                 HumanName removed; Reference.display removed (it is usually a name)
    (B) geography < state     Address: line/city/district/text/geolocation removed, postalCode -> ZIP3
                              ("000" for restricted prefixes), state and country kept; Location.position removed
    (C) dates, ages > 89      date/dateTime -> year; instant removed (it cannot be a year); Period parts
                              likewise; birthDate -> year, and clamped so the age stays "90 or older";
                              Age > 89 -> 90 with comparator ">="
    (D-F) phone, fax, email   ContactPoint removed
    (G-M, R) numbers          Identifier.value pseudonymised (type and system kept); id/oid/uuid elements
                              (ImagingStudy UIDs...) pseudonymised; resource ids and references rewritten
                              to the same pseudonymous ids, so a patient's records stay linked
    (N) URLs                  url elements removed (Attachment.url, Endpoint.address...); absolute
                              references lose their host; Meta.source and Bundle.link removed
    (O) IP addresses          only in free text (AuditEvent.agent.network.address is a string): removed
    (P, Q) biometrics, photos Attachment data/url/hash/title removed; Patient/Practitioner/RelatedPerson.photo removed
    free text                 Narrative replaced by a generated one-line narrative; every string/markdown
                              element removed (Annotation, note, comment, description, valueString...)
                              except terminology labels and units (``policy.keep_strings``).
                              CodeableConcept.text is kept only when the concept is coded
                              (``codeable_concept_text``): then it labels a code; alone it is free text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote

from medcloud.fhir.definitions import resource_types
from medcloud.fhir.indexing._element_types import TYPES
from medcloud.security.deid.policy import Action, DeidPolicy

_DROP = object()
_RESOURCE_TYPES = frozenset(resource_types())
_PHOTOS = frozenset({"Patient.photo", "Practitioner.photo", "RelatedPerson.photo", "Person.photo"})
_LEFTOVERS = re.compile(
    r"[\w.+-]+@[\w-]+\.[\w.-]+"  # e-mail
    r"|\b(?:https?|ftp)://|\bwww\."  # URL
    r"|\b\d{1,3}(?:\.\d{1,3}){3}\b"  # IPv4
    r"|\b\d{3}-\d{2}-\d{4}\b"  # SSN
    r"|\b\d{3}[-. )]\d{3}[-. ]\d{4}\b"  # phone
    r"|\b\d{4}-\d{2}-\d{2}"  # full date
)
_REL_REF = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?")
_ABS_REF = re.compile(r"[a-z][a-z0-9+.-]*://.+?/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?")
# uri elements that name code/identifier systems or definitions rather than locate something
_NAMING_URIS = frozenset({"Extension.url", "Reference.type"})
_NARRATIVE = '<div xmlns="http://www.w3.org/1999/xhtml"><p>{} (de-identified)</p></div>'


@dataclass(frozen=True, slots=True)
class DeidContext:
    """Per-run facts: the year ages are computed at (inject the clock), and optionally the patient."""

    reference_year: int
    patient_id: str | None = None  # else taken from the resource (Patient.id, subject, patient...)


def deidentify(resource: dict[str, Any], policy: DeidPolicy, context: DeidContext) -> dict[str, Any]:
    """A de-identified copy of ``resource`` (the input is not changed)."""
    walker = _Walker(policy, context)
    out = walker.resource(resource, patient=context.patient_id or _patient_of(resource), contained=False)
    return out if isinstance(out, dict) else {"resourceType": resource.get("resourceType")}


def _patient_of(resource: dict[str, Any]) -> str | None:
    rtype = resource.get("resourceType")
    if rtype == "Patient" and isinstance(resource.get("id"), str):
        return resource["id"]
    if rtype == "Bundle":
        entries = resource.get("entry")
        for e in entries if isinstance(entries, list) else ():
            r = e.get("resource") if isinstance(e, dict) else None
            if isinstance(r, dict) and r.get("resourceType") == "Patient" and isinstance(r.get("id"), str):
                return r["id"]
        return None
    for key in ("patient", "subject", "beneficiary", "individual"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            target = _target_id(ref["reference"], "Patient")
            if target is not None:
                return target
    return None


def _target_id(ref: str, rtype: str) -> str | None:
    if ref.startswith("urn:uuid:"):
        return ref[9:]
    m = _REL_REF.fullmatch(ref) or _ABS_REF.fullmatch(ref)
    return m.group(2) if m and m.group(1) == rtype else None


class _Walker:
    def __init__(self, policy: DeidPolicy, context: DeidContext):
        self.p = policy
        self.ctx = context

    # ------------------------------------------------------------ resources

    def resource(self, r: Any, *, patient: str | None, contained: bool) -> Any:
        if not isinstance(r, dict) or not isinstance(r.get("resourceType"), str):
            return _DROP
        rtype = r["resourceType"]
        out: dict[str, Any] = {"resourceType": rtype}
        for k, v in r.items():
            if k == "resourceType":
                continue
            if k == "id":
                if contained or self.p.resource_ids is Action.KEEP:
                    out["id"] = v  # contained ids are local anchors ("#id"), not identifiers
                elif isinstance(v, str):
                    out["id"] = self.p.pseudonym_id(v)
                continue
            if k == "text" and self.p.free_text is not Action.KEEP:
                out["text"] = {"status": "generated", "div": _NARRATIVE.format(rtype)}
                continue
            if rtype == "Bundle" and k == "link":
                continue  # self/next links carry query strings and the server's URL
            if rtype == "Bundle" and k == "entry" and isinstance(v, list):
                out["entry"] = [e for e in (self.entry(x, patient) for x in v) if e is not _DROP]
                continue
            self.put(out, k, v, rtype, patient)
        self.primitive_extensions(out, r, patient)
        if rtype == "Patient" and "birthDate" in out:
            self.clamp_birth(out, r)
        return out

    def entry(self, e: Any, bundle_patient: str | None) -> Any:
        if not isinstance(e, dict):
            return _DROP
        out: dict[str, Any] = {}
        for k, v in e.items():
            if k == "fullUrl" and isinstance(v, str):
                ref = self.reference_string(v)
                if ref is not None:
                    out["fullUrl"] = ref
            elif k == "resource":
                res = self.resource(v, patient=(_patient_of(v) if isinstance(v, dict) else None) or bundle_patient,
                                    contained=False)
                if res is not _DROP:
                    out["resource"] = res
            elif k in ("request", "response") and isinstance(v, dict):
                out[k] = self.bundle_exchange(v, bundle_patient)
            elif k == "search" and isinstance(v, dict):
                out[k] = {kk: vv for kk, vv in v.items() if kk in ("mode", "score")}
        return out

    def bundle_exchange(self, v: dict[str, Any], patient: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, x in v.items():
            if k in ("method", "status", "etag"):
                out[k] = x
            elif k in ("url", "location") and isinstance(x, str):
                ref = x if _REL_REF.fullmatch(x) is None and "/" not in x and "?" not in x else self.reference_string(x)
                if ref is not None:
                    out[k] = ref
            elif k == "ifNoneExist" and isinstance(x, str):
                out[k] = self.query(x)
            elif k in ("lastModified", "ifModifiedSince") and isinstance(x, str):
                d = self.date(x, "instant", patient)
                if d is not _DROP:
                    out[k] = d
        return out

    # ------------------------------------------------------------ elements

    def put(self, out: dict[str, Any], key: str, value: Any, owner: str, patient: str | None) -> None:
        if key.startswith("_"):
            return  # primitive extensions: see primitive_extensions, once the values are known
        ftype = TYPES.get(owner, {}).get(key)
        if ftype is None:
            return  # not an R4 element: unknown content is dropped
        path = f"{owner}.{key}"
        if path in _PHOTOS and self.p.biometrics is not Action.KEEP:
            return
        if path == "Location.position" and self.p.geography is not Action.KEEP:
            return
        if path == "Meta.source" and self.p.urls is not Action.KEEP:
            return
        if isinstance(value, list):
            items = [self.value(x, ftype, path, patient) for x in value]
            kept = [x for x in items if x is not _DROP]
            if kept:
                out[key] = kept
        else:
            v = self.value(value, ftype, path, patient)
            if v is not _DROP:
                out[key] = v

    def primitive_extensions(self, out: dict[str, Any], src: dict[str, Any], patient: str | None) -> None:
        """``_birthDate`` and friends survive only beside a kept, unchanged-shape value."""
        for key, value in src.items():
            if not key.startswith("_") or key[1:] not in out:
                continue
            if isinstance(value, list) and isinstance(out[key[1:]], list) and len(value) == len(out[key[1:]]):
                items = [self.element(x, "Element", patient) if x is not None else None for x in value]
                items = [None if x is _DROP else x for x in items]
                if any(x is not None for x in items):
                    out[key] = items
            elif isinstance(value, dict):
                v = self.element(value, "Element", patient)
                if v is not _DROP:
                    out[key] = v

    def value(self, v: Any, ftype: str, path: str, patient: str | None) -> Any:
        if ftype == "Resource":
            return self.resource(v, patient=patient, contained=True)
        if ftype[0].islower():
            return self.primitive(v, ftype, path, patient)
        handler = getattr(self, f"t_{ftype}", None)
        if handler is not None:
            return handler(v, patient)
        return self.element(v, ftype, patient)

    def element(self, v: Any, ftype: str, patient: str | None) -> Any:
        if not isinstance(v, dict):
            return _DROP
        out: dict[str, Any] = {}
        for k, x in v.items():
            self.put(out, k, x, ftype, patient)
        self.primitive_extensions(out, v, patient)
        if ftype == "Extension" and not any(k.startswith("value") or k == "extension" for k in out):
            return _DROP  # an extension whose value was removed says nothing (and would be invalid)
        if not out or set(out) <= {"id", "url"}:
            return _DROP
        return out

    def primitive(self, v: Any, ftype: str, path: str, patient: str | None) -> Any:
        if isinstance(v, (dict, list)) or v is None:
            return _DROP  # malformed: a primitive holding structure could hold anything
        if ftype in ("date", "dateTime", "instant"):
            return self.date(v, ftype, patient) if isinstance(v, str) else _DROP
        if ftype in ("string", "markdown"):
            return self.text(v, path)
        if ftype in ("id", "oid", "uuid"):
            if path == "Meta.versionId" or self.p.identifiers is Action.KEEP:
                return v
            if self.p.identifiers is Action.REMOVE or not isinstance(v, str):
                return _DROP
            if ftype == "uuid" and v.startswith("urn:uuid:"):
                return "urn:uuid:" + self.p.pseudonym_id(v[9:])
            if ftype == "oid" or path.endswith(".uid"):
                return ("urn:oid:" if v.startswith("urn:oid:") else "") + self.p.pseudonym_uid(v.removeprefix("urn:oid:"))
            return self.p.pseudonym("id-element", v)
        if ftype == "url":
            return v if self.p.urls is Action.KEEP else _DROP
        if ftype == "uri" and self.p.urls is not Action.KEEP and path not in _NAMING_URIS \
                and not path.endswith(".system") and isinstance(v, str) and ("://" in v or v.startswith("www.")):
            return _DROP  # a locator (Device.url, Subscription endpoints...), not a naming system
        if ftype == "base64Binary":
            return v if self.p.biometrics is Action.KEEP and self.p.free_text is Action.KEEP else _DROP
        if ftype == "xhtml":
            return v if self.p.free_text is Action.KEEP else _DROP
        return v  # boolean, integer, decimal, code, uri, canonical, time, positiveInt, unsignedInt

    def text(self, v: Any, path: str) -> Any:
        if not isinstance(v, str):
            return _DROP
        if self.p.free_text is Action.KEEP:
            return v
        if path in self.p.keep_strings and not _LEFTOVERS.search(v):
            return v
        return _DROP

    # ------------------------------------------------------------ dates

    def date(self, v: str, ftype: str, patient: str | None) -> Any:
        action = self.p.dates
        if action is Action.KEEP:
            return v
        if action is Action.REMOVE:
            return _DROP
        if action is Action.GENERALISE:
            if ftype == "instant" or not re.match(r"\d{4}", v):
                return _DROP
            return v[:4]
        # shift: by the patient's offset; without a patient there is nothing to be consistent with
        if patient is None:
            return _DROP if ftype == "instant" else (v[:4] if re.match(r"\d{4}", v) else _DROP)
        return _shift(v, self.p.shift_days(patient))

    def clamp_birth(self, out: dict[str, Any], original: dict[str, Any]) -> None:
        """§164.514(b)(2)(i)(C): a birth year that reveals an age over 89 is aggregated too."""
        if self.p.ages is Action.KEEP or not isinstance(original.get("birthDate"), str):
            return
        try:
            born = int(original["birthDate"][:4])
        except ValueError:
            return
        died = original.get("deceasedDateTime")
        until = int(died[:4]) if isinstance(died, str) and died[:4].isdigit() else self.ctx.reference_year
        if until - born > self.p.max_age:
            out["birthDate"] = str(until - self.p.max_age - 1)
            out.pop("_birthDate", None)  # a birthTime extension would still tell the year

    # ------------------------------------------------------------ datatypes (t_<Type>)

    def t_HumanName(self, v: Any, patient: str | None) -> Any:
        if self.p.names is Action.KEEP:
            return v
        if self.p.names is Action.REMOVE or not isinstance(v, dict):
            return _DROP
        parts: list[Any] = []
        for k in ("prefix", "given", "family", "suffix"):
            x = v.get(k)
            parts.extend(x if isinstance(x, list) else [x])
        full = " ".join(str(x) for x in parts if x)
        return {"text": "Anonymous-" + self.p.pseudonym("name", full or str(v.get("text", "")))[:12]}

    def t_Address(self, v: Any, patient: str | None) -> Any:
        if self.p.geography is Action.KEEP:
            return v
        if self.p.geography is Action.REMOVE or not isinstance(v, dict):
            return _DROP
        out: dict[str, Any] = {k: v[k] for k in ("use", "type") if isinstance(v.get(k), str)}
        for k in ("state", "country"):
            if isinstance(v.get(k), str):
                out[k] = v[k]
        zip3 = self.p.generalise_zip(v["postalCode"]) if isinstance(v.get("postalCode"), str) else None
        if zip3 is not None:
            out["postalCode"] = zip3
        if isinstance(v.get("period"), dict):
            period = self.element(v["period"], "Period", patient)
            if period is not _DROP:
                out["period"] = period
        return out if set(out) - {"use", "type"} else _DROP

    def t_ContactPoint(self, v: Any, patient: str | None) -> Any:
        if self.p.telecom is Action.KEEP:
            return v
        if self.p.telecom is Action.REMOVE or not isinstance(v, dict) or not isinstance(v.get("value"), str):
            return _DROP
        return {k: x for k, x in v.items() if k in ("system", "use")} | {"value": self.p.pseudonym("telecom", v["value"])}

    def t_Identifier(self, v: Any, patient: str | None) -> Any:
        if self.p.identifiers is Action.KEEP:
            return v
        if self.p.identifiers is Action.REMOVE or not isinstance(v, dict):
            return _DROP
        out: dict[str, Any] = {}
        for k, x in v.items():
            if k == "value":
                if isinstance(x, str) and v.get("system") == "urn:dicom:uid" and x.startswith("urn:oid:"):
                    out["value"] = "urn:oid:" + self.p.pseudonym_uid(x[8:])  # = the DICOM de-id UID (U)
                elif isinstance(x, str):
                    out["value"] = self.p.pseudonym("identifier", x)
            elif k in ("use", "system"):
                out[k] = x
            elif k == "type":
                t = self.t_CodeableConcept(x, patient)
                if t is not _DROP:
                    out["type"] = t
            elif k == "period":
                t = self.element(x, "Period", patient)
                if t is not _DROP:
                    out["period"] = t
            elif k == "assigner":
                t = self.t_Reference(x, patient)
                if t is not _DROP:
                    out["assigner"] = t
        return out if "value" in out or "system" in out else _DROP

    def t_Reference(self, v: Any, patient: str | None) -> Any:
        if not isinstance(v, dict):
            return _DROP
        out: dict[str, Any] = {}
        for k, x in v.items():
            if k == "reference" and isinstance(x, str):
                ref = self.reference_string(x)
                if ref is not None:
                    out["reference"] = ref
            elif k == "type":
                out["type"] = x
            elif k == "identifier":
                t = self.t_Identifier(x, patient)
                if t is not _DROP:
                    out["identifier"] = t
            elif k == "display" and self.p.names is Action.KEEP and self.p.free_text is Action.KEEP:
                out["display"] = x
        return out if set(out) - {"type"} else _DROP

    def t_Attachment(self, v: Any, patient: str | None) -> Any:
        if self.p.biometrics is Action.KEEP and self.p.urls is Action.KEEP and self.p.free_text is Action.KEEP:
            return v
        if not isinstance(v, dict):
            return _DROP
        out = {k: v[k] for k in ("contentType", "language") if isinstance(v.get(k), str)}
        if isinstance(v.get("creation"), str):
            d = self.date(v["creation"], "dateTime", patient)
            if d is not _DROP:
                out["creation"] = d
        return out or _DROP

    def t_Narrative(self, v: Any, patient: str | None) -> Any:
        return v if self.p.free_text is Action.KEEP else _DROP

    def t_Annotation(self, v: Any, patient: str | None) -> Any:
        return v if self.p.free_text is Action.KEEP else _DROP

    def t_CodeableConcept(self, v: Any, patient: str | None) -> Any:
        if not isinstance(v, dict):
            return _DROP
        out: dict[str, Any] = {}
        raw = v.get("coding")
        if not isinstance(raw, list):
            raw = []
        codings = [c for c in (self.element(x, "Coding", patient) for x in raw) if c is not _DROP]
        if codings:
            out["coding"] = codings
        text = v.get("text")
        mode = "keep" if self.p.free_text is Action.KEEP else self.p.codeable_concept_text
        if isinstance(text, str) and (mode == "keep" or (mode == "keep-if-coded" and codings)) \
                and (mode == "keep" or not _LEFTOVERS.search(text)):
            out["text"] = text
        for k in ("id", "extension"):
            if k in v:
                self.put(out, k, v[k], "CodeableConcept", patient)
        return out if "coding" in out or "text" in out else _DROP

    def t_Age(self, v: Any, patient: str | None) -> Any:
        out = self.element(v, "Age", patient)
        if out is _DROP or self.p.ages is Action.KEEP or not isinstance(out.get("value"), (int, float)):
            return out
        if self.p.ages is Action.REMOVE:
            return _DROP
        unit = out.get("code") or out.get("unit")
        unit = unit if isinstance(unit, str) else "a"
        years = out["value"] * {"a": 1, "mo": 1 / 12, "wk": 1 / 52.18, "d": 1 / 365.25, "h": 1 / 8766}.get(unit, 1)
        _, aggregated = self.p.generalise_age(years)
        if aggregated:
            out = {k: x for k, x in out.items() if k in ("system",)} | {
                "value": self.p.max_age + 1, "comparator": ">=", "unit": "a", "code": "a"}
        return out

    # ------------------------------------------------------------ references

    def reference_string(self, ref: str) -> str | None:
        if ref.startswith("#"):
            return ref
        if self.p.resource_ids is Action.KEEP:
            return ref if self.p.urls is Action.KEEP or "://" not in ref else _relative(ref)
        if ref.startswith("urn:uuid:"):
            return "urn:uuid:" + self.p.pseudonym_id(ref[9:])
        if ref.startswith("urn:oid:"):
            return "urn:oid:" + self.p.pseudonym_uid(ref[8:])
        head, q, query = ref.partition("?")
        if q and re.fullmatch(r"[A-Z][A-Za-z]+", head) and head in _RESOURCE_TYPES:
            return f"{head}?{self.query(query)}"
        m = _REL_REF.fullmatch(ref) or _ABS_REF.fullmatch(ref)
        if m and m.group(1) in _RESOURCE_TYPES:
            return f"{m.group(1)}/{self.p.pseudonym_id(m.group(2))}{m.group(3) or ''}"
        if re.fullmatch(r"[A-Z][A-Za-z]+", ref) and ref in _RESOURCE_TYPES:
            return ref
        return None  # anything else may be a URL or a free-form identifier

    def query(self, query: str) -> str:
        """Conditional reference / ifNoneExist: identifier values pseudonymised like Identifier.value."""
        out = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            base = name.split(":", 1)[0]
            if base in ("identifier", "_id"):
                parts = []
                for alt in value.split(","):
                    system, bar, code = alt.rpartition("|")
                    if base == "_id":
                        parts.append(self.p.pseudonym_id(alt))
                    else:
                        parts.append(f"{system}{bar}{self.p.pseudonym('identifier', code)}")
                value = ",".join(parts)
            else:
                value = self.p.pseudonym("query", value)
            out.append(f"{quote(name, safe=':._-')}={quote(value, safe='|:/._-,')}")
        return "&".join(out)


def _relative(ref: str) -> str | None:
    m = _ABS_REF.fullmatch(ref)
    return f"{m.group(1)}/{m.group(2)}{m.group(3) or ''}" if m else None


def _shift(v: str, days: int) -> Any:
    """Shift an R4 date/dateTime/instant by ``days``, keeping its precision and time zone."""
    try:
        if re.fullmatch(r"\d{4}", v):
            return v  # a year alone cannot move by days
        if re.fullmatch(r"\d{4}-\d{2}", v):
            return (date.fromisoformat(v + "-15") + timedelta(days=days)).isoformat()[:7]
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            return (date.fromisoformat(v) + timedelta(days=days)).isoformat()
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        shifted = (dt + timedelta(days=days)).isoformat()
        return shifted.replace("+00:00", "Z") if v.endswith("Z") else shifted
    except (ValueError, OverflowError):
        return _DROP

