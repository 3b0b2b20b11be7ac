"""Keep a FHIR ``ImagingStudy`` (and its ``Patient``) in step with each stored DICOM study.

Everything goes through the FHIR router in-process, so the resources are validated, indexed,
audited and part of ``Patient/[id]/$everything`` like any other. The ImagingStudy id *is* the
StudyInstanceUID (a UID is a valid FHIR id: digits and dots, at most 64 characters), so an update
needs no lookup and a rebuilt study always lands on the same resource. The Patient is found by
identifier (PatientID under ``ArchiveConfig.patient_id_system``) or created from the DICOM header.

Mapping: hl7.org/fhir/R4/imagingstudy.html and the DICOM-FHIR mapping in PS3.17 / IHE RAD.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from medcloud.errors import MedcloudError
from medcloud.fhir import router
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.imaging.archive import Archive

log = logging.getLogger("medcloud.imaging")

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SEX = {"M": "male", "F": "female", "O": "other"}


class ImagingStudyLink:
    """``Archive.on_change`` hook: one ImagingStudy create/update/delete per changed study."""

    def __init__(self, archive: Archive, fhir: FhirContext):
        self.archive = archive
        self.fhir = fhir

    def __call__(self, studies: set[str]) -> None:
        """Bring the ImagingStudy of each study in line with the archive.

        A group-committed batch (imaging/group_commit.py) hands over many studies at once: each
        Patient is resolved once per call (several studies of one patient are common), and all the
        ImagingStudy PUTs go in one FHIR ``transaction`` Bundle (one database transaction, not one
        per study). If that Bundle is refused, each study is written alone so one bad study cannot
        keep the others stale.
        """
        patients: dict[str, str] = {}
        puts: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        summaries = self.archive.study_summaries(studies)  # one read for the batch, not one per study
        for uid in sorted(studies):
            try:
                prepared = self._prepare(uid, patients, summaries.get(uid))
            except Exception:  # noqa: BLE001 - one study's link must not stop the others
                log.exception("could not update ImagingStudy/%s", uid)
                continue
            if prepared is not None:
                puts.append((uid, *prepared))
        if len(puts) > 1 and self._put_all(puts):
            return
        for uid, resource, summary in puts:
            try:
                self._put(uid, resource, summary)
            except Exception:  # noqa: BLE001 - one study's link must not stop the others
                log.exception("could not update ImagingStudy/%s", uid)

    def sync(self, study_uid: str, patients: dict[str, str] | None = None) -> str | None:
        """Create, update or delete ``ImagingStudy/<StudyInstanceUID>``; returns its id or None if deleted.

        ``patients`` (PatientID -> Patient id) memoises Patients already resolved by the caller."""
        prepared = self._prepare(study_uid, patients if patients is not None else {})
        if prepared is None:
            return None
        self._put(study_uid, *prepared)
        return study_uid

    def _prepare(self, study_uid: str, patients: dict[str, str], summary: dict[str, Any] | None = None,
                 ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The ImagingStudy to PUT and the study summary (read unless given); a study gone from the
        archive is DELETEd (None)."""
        if summary is None:
            summary = self.archive.study_summary(study_uid)
        if summary is None:
            resp = self._call(FhirRequest("DELETE", f"ImagingStudy/{study_uid}"))
            if resp.status >= 400 and resp.status != 404:
                raise MedcloudError(f"DELETE ImagingStudy/{study_uid} answered {resp.status}")
            return None
        pid = summary.get("patient_id") or ""
        if pid not in patients:
            patients[pid] = self._patient(summary)
        return imaging_study(summary, patients[pid]), summary

    def _put(self, study_uid: str, resource: dict[str, Any], summary: dict[str, Any]) -> None:
        resp = self._call(FhirRequest("PUT", f"ImagingStudy/{study_uid}", body=resource,
                                      content_type="application/fhir+json"))
        if resp.status >= 300:
            raise MedcloudError(f"PUT ImagingStudy/{study_uid} answered {resp.status}: {resp.resource}")
        if summary.get("fhir_id") != study_uid:
            self.archive.set_study_link(study_uid, study_uid)

    def _put_all(self, puts: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> bool:
        """PUT every ImagingStudy in one transaction Bundle; False (nothing written) if it was refused."""
        body = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": resource, "request": {"method": "PUT", "url": f"ImagingStudy/{uid}"}}
            for uid, resource, _ in puts]}
        resp = self._call(FhirRequest("POST", "", body=body, content_type="application/fhir+json"))
        if resp.status >= 300:
            log.warning("ImagingStudy transaction of %d studies answered %d; writing them one by one",
                        len(puts), resp.status)
            return False
        unlinked = [uid for uid, _, summary in puts if summary.get("fhir_id") != uid]
        if unlinked:
            self.archive.link_studies(unlinked)
        return True

    def _patient(self, summary: dict[str, Any]) -> str:
        linked = summary.get("patient_fhir_id")
        if linked:
            read = self._call(FhirRequest("GET", f"Patient/{linked}"))
            if read.status == 200:
                return str(linked)
        system = self.archive.config.patient_id_system
        pid = summary.get("patient_id") or ""
        headers = {}
        if pid:
            # Conditional create (http.html#ccreate): finds the Patient by identifier or creates it,
            # serialised by the router, so two concurrent studies of one patient make one Patient.
            headers["if-none-exist"] = f"identifier={_escape(system)}|{_escape(pid)}"
        created = self._call(FhirRequest("POST", "Patient", body=patient_resource(summary, system), headers=headers,
                                         content_type="application/fhir+json"))
        if created.status == 412 and pid:  # several Patients carry this identifier: take the first
            found = self._call(FhirRequest("GET", "Patient", query=[("identifier", f"{system}|{_token(pid)}"),
                                                                     ("_count", "1")]))
            entries = _body(found).get("entry") or [] if found.status == 200 else []
            if entries:
                fhir_id = str(entries[0]["resource"]["id"])
                self.archive.set_patient_link(pid, fhir_id)
                return fhir_id
        if created.status >= 300:
            raise MedcloudError(f"could not create the Patient for PatientID {pid!r}: {created.status}")
        fhir_id = _id_of(created)
        self.archive.set_patient_link(pid, fhir_id)
        return fhir_id

    def _call(self, req: FhirRequest) -> FhirResponse:
        req.in_bundle = False
        return router.handle(self.fhir, req)


def _token(value: str) -> str:
    """Escape a token search value (search.html#escaping)."""
    return value.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")


def _escape(value: str) -> str:
    """A token search value, escaped and URL-encoded for an If-None-Exist condition."""
    from urllib.parse import quote

    return quote(_token(value), safe="")


def _body(resp: FhirResponse) -> dict[str, Any]:
    if resp.resource is not None:  # search Bundles embed stored JSON as orjson Fragments: round-trip
        return dict(orjson.loads(orjson.dumps(resp.resource)))
    return dict(orjson.loads(resp.raw)) if resp.raw else {}


def _id_of(resp: FhirResponse) -> str:
    if resp.resource is not None and resp.resource.get("id"):
        return str(resp.resource["id"])
    if resp.raw is not None:
        return str(orjson.loads(resp.raw)["id"])
    assert resp.location is not None
    parts = resp.location.split("/")
    return parts[parts.index("Patient") + 1]


def patient_resource(summary: dict[str, Any], system: str) -> dict[str, Any]:
    """A Patient from the DICOM Patient module (PatientID, PatientName, PatientBirthDate, PatientSex)."""
    p: dict[str, Any] = {"resourceType": "Patient"}
    if summary.get("patient_id"):
        p["identifier"] = [{"system": system, "value": summary["patient_id"]}]
    name = human_name(summary.get("patient_name"))
    if name:
        p["name"] = [name]
    if summary.get("patient_birth_date"):
        d = summary["patient_birth_date"]
        p["birthDate"] = f"{d[:4]}-{d[4:6]}-{d[6:8]}"
    sex = (summary.get("patient_sex") or "").upper()[:1]
    if sex:
        p["gender"] = SEX.get(sex, "unknown")
    return p


def human_name(pn: str | None) -> dict[str, Any] | None:
    """A FHIR HumanName from the alphabetic group of a DICOM PN (family^given^middle^prefix^suffix)."""
    if not pn:
        return None
    alpha = pn.split("=")[0]
    parts = (alpha.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (x.strip() for x in parts)
    name: dict[str, Any] = {"text": " ".join(x for x in (prefix, given, middle, family, suffix) if x)}
    if family:
        name["family"] = family
    givens = [x for x in (given, middle) if x]
    if givens:
        name["given"] = givens
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name if name["text"] else None


def imaging_study(summary: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """The R4 ImagingStudy for a study summary (``Archive.study_summary``)."""
    uid = summary["study_uid"]
    res: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": uid,
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "status": "available",
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if summary.get("accession_number"):
        res["identifier"].append({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": summary["accession_number"],
        })
    started = date_time(summary.get("study_date"), summary.get("study_time"))
    if started:
        res["started"] = started
    modalities = [m for m in (summary.get("modalities") or "").split("\\") if m]
    if modalities:
        res["modality"] = [{"system": DCM, "code": m} for m in modalities]
    res["numberOfSeries"] = summary["num_series"]
    res["numberOfInstances"] = summary["num_instances"]
    if summary.get("study_description"):
        res["description"] = summary["study_description"]
    series = []
    for s in summary["series"]:
        item: dict[str, Any] = {"uid": s["series_uid"], "modality": {"system": DCM, "code": s["modality"] or "OT"}}
        if s.get("series_number") is not None and s["series_number"] >= 0:
            item["number"] = s["series_number"]
        if s.get("series_description"):
            item["description"] = s["series_description"]
        item["numberOfInstances"] = s["num_instances"]
        if s.get("body_part_examined"):
            item["bodySite"] = {"system": DCM, "code": s["body_part_examined"], "display": s["body_part_examined"]}
        s_started = date_time(s.get("pps_start_date"), s.get("pps_start_time"))
        if s_started:
            item["started"] = s_started
        instances = []
        for i in s["instances"]:
            inst: dict[str, Any] = {"uid": i["sop_uid"],
                                    "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{i['sop_class_uid']}"}}
            if i.get("instance_number") is not None and i["instance_number"] >= 0:
                inst["number"] = i["instance_number"]
            instances.append(inst)
        if instances:
            item["instance"] = instances
        series.append(item)
    if series:
        res["series"] = series
    return res


def date_time(da: str | None, tm: str | None) -> str | None:
    """A FHIR dateTime from DICOM DA and normalised TM (date only when there is no time)."""
    if not da:
        return None
    date = f"{da[:4]}-{da[4:6]}-{da[6:8]}"
    if not tm:
        return date
    # FHIR requires a time zone whenever a time is given; DICOM times are local and zone-less here,
    # so they are reported in UTC as the best available statement.
    return f"{date}T{tm[:2]}:{tm[2:4]}:{tm[4:6]}Z"
