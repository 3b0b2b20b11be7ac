"""Automatic reads: when a study becomes stable, every applicable active image model reads it.

Flow: ``Archive.on_stable`` -> ``Reads.on_stable`` picks the active image models whose manifest
``applies_to`` (modality, body part, SOP class) matches some of the study's image instances and
enqueues one ``ai-read`` job per (study, model version, input instances) on the ``jobs`` table. The
job id is a hash of exactly that, so a study that becomes stable again with the same images (our
own SR and heatmap arriving is such a change) enqueues nothing new; new images mean a new read.

The job (any worker, in-process or ``medcloud worker``) reads the instances through the archive's
blob store, preprocesses them with ``medcloud.ai.preprocess``, runs the model (``ai/runtime.py``),
averages the per-image probabilities (``runtime.aggregate``) and writes, in this order:

1. a Comprehensive SR and a Secondary Capture heatmap into the study through ``Archive.store_many``
   (the normal store path: QIDO and the ImagingStudy see them), skipping any already stored;
2. ONE FHIR transaction (through the router, so validated, indexed and audited as ``system``):
   the Device (model name + version), an Observation per class probability, a Media with the
   heatmap as a PNG (the explanation, readable without a DICOM viewer; ``DiagnosticReport.media``)
   and the DiagnosticReport (``preliminary``), all PUT to ids derived from (study, model version).

Both steps are idempotent, so a job retried after a crash or a lost lease, at any point, ends with
exactly one set of outputs. Nothing in the FHIR part is half-written (one transaction); the two
DICOM instances go in one archive transaction.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError

from medcloud.ai import dicom_out
from medcloud.ai.dicom_out import OUTPUT_MARK, Read, SourceImage
from medcloud.ai.package import AppliesTo, ChecksumMismatch, Manifest, PackageError
from medcloud.ai.registry import Registry
from medcloud.ai.runtime import Runtime, aggregate, overlay
from medcloud.errors import MedcloudError, NotFound
from medcloud.fhir import router
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest
from medcloud.imaging.archive import Archive
from medcloud.jobs import Job, JobControl, JobQueue, Permanent

log = logging.getLogger("medcloud.ai")

KIND = "ai-read"
SYSTEM = "urn:medcloud:ai"  # our code system for model labels and probabilities (no public one exists)
DEVICE_EXTENSION = "urn:medcloud:fhir:extension:ai-device"  # R4 DiagnosticReport.performer takes no Device
_NON_IMAGE_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.104.")  # SR, encapsulated docs


@dataclass(frozen=True)
class Candidate:
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    body_part: str


class Reads:
    def __init__(self, archive: Archive, fhir: FhirContext, registry: Registry, runtime: Runtime,
                 queue: JobQueue, *, batch: int = 16):
        self.archive = archive
        self.fhir = fhir
        self.registry = registry
        self.runtime = runtime
        self.queue = queue
        self.batch = batch
        self.wakers: list[Callable[[], None]] = []  # job workers to wake when a read was enqueued

    # -- enqueue ------------------------------------------------------------------------------------

    def on_stable(self, studies: list[str]) -> None:
        """``Archive.on_stable`` subscriber."""
        for uid in studies:
            try:
                self.enqueue(uid)
            except NotFound:  # deleted since it became stable
                continue
            except Exception:  # noqa: BLE001 - one study must not stop the others
                log.exception("could not enqueue AI reads for study %s", uid)

    def enqueue(self, study_uid: str) -> list[str]:
        """Enqueue a read of the study by every applicable active image model; returns new job ids."""
        return [jid for jid, created in self.request(study_uid) if created]

    def request(self, study_uid: str, model: str | None = None) -> list[tuple[str, bool]]:
        """The read jobs of the study by every applicable active image model (or only ``model``):
        ``(job id, created)`` per model; a read of the same images by the same model version is
        the job that already exists (``created`` False). An unknown study is NotFound."""
        summary = self.archive.study_summary(study_uid)
        if summary is None:
            raise NotFound(f"study {study_uid} is not stored")
        candidates = _candidates(summary)
        out: list[tuple[str, bool]] = []
        for name, version, manifest in self._active_image_models():
            if model is not None and name != model:
                continue
            chosen = [c for c in candidates if applies(manifest.applies_to, c)]
            if not chosen:
                continue
            key = read_key(study_uid, name, version, [c.sop_uid for c in chosen])
            request = {"study": study_uid, "model": name, "version": version, "key": key,
                       "patient": summary.get("patient_fhir_id"),
                       "instances": [[c.series_uid, c.sop_uid, c.sop_class_uid] for c in chosen]}
            jid = "ai-read-" + key[:48]
            if self.queue.get(jid) is not None:
                out.append((jid, False))
                continue
            try:
                self.queue.enqueue(KIND, request, owner=summary.get("patient_fhir_id"), job_id=jid)
                out.append((jid, True))
            except IntegrityError:  # another replica enqueued the same read first
                out.append((jid, False))
        if any(created for _, created in out):
            for wake in list(self.wakers):
                wake()
        return out

    def _active_image_models(self) -> list[tuple[str, str, Manifest]]:
        out = []
        for v in self.registry.list():
            if v.active and v.manifest.get("input", {}).get("kind") == "image":
                out.append((v.name, v.version, Manifest.model_validate(v.manifest)))
        return out

    # -- run ----------------------------------------------------------------------------------------

    def handle(self, job: Job, control: JobControl) -> dict[str, Any]:
        """The ``ai-read`` job handler (see the module docstring for what it writes)."""
        from medcloud.ai import preprocess

        req = job.request
        study_uid, name, version = req["study"], req["model"], req["version"]
        try:
            model = self.runtime.model(name, version)
        except NotFound as e:
            raise Permanent(f"model {name} {version} is no longer registered: {e.message}") from e
        except (ChecksumMismatch, PackageError) as e:
            raise Permanent(f"model {name} {version} cannot be used: {e.message}") from e
        spec = model.spec
        try:
            refs = {r.sop_uid: r for r in self.archive.instances(study_uid)}
        except NotFound as e:
            raise Permanent(f"study {study_uid} is no longer stored") from e
        inputs: list[np.ndarray] = []
        owners: list[tuple[SourceImage, str, int]] = []  # per input: instance, blob key, frame number
        skipped: list[dict[str, str]] = []
        header = None
        for n, (series_uid, sop_uid, sop_class) in enumerate(req["instances"]):
            if n and n % 64 == 0:
                control.checkpoint()  # a long study: keep the lease
            ref = refs.get(sop_uid)
            if ref is None:
                skipped.append({"instance": sop_uid, "error": "no longer stored"})
                continue
            data = self.archive.blobs.read(ref.blob_key)
            try:
                fr = preprocess.load_frames(data, window=spec.windowing)
                xs = [preprocess.to_model_input(f, spec) for f in fr]
            except MedcloudError as e:
                skipped.append({"instance": sop_uid, "error": e.message})
                continue
            except Exception as e:  # noqa: BLE001 - a decoder's own exception: this instance, not the read
                skipped.append({"instance": sop_uid, "error": f"cannot read the image: {type(e).__name__}: {e}"})
                continue
            if header is None:
                header = _header(data)
            # Only the small model inputs are kept; the one full frame the heatmap is drawn on is read again.
            for k, x in enumerate(xs):
                inputs.append(x)
                owners.append((SourceImage(series_uid, sop_uid, sop_class), ref.blob_key, k))
        if not inputs or header is None:
            raise Permanent("no instance of the study could be read as an image: "
                            + "; ".join(f"{s['instance']}: {s['error']}" for s in skipped))
        probs = model.predict(inputs, batch=self.batch)
        p = aggregate(probs)
        top = int(np.argmax(p))
        best = int(np.argmax(probs[:, top]))
        heat = model.explain(inputs[best], target=top).heatmap
        control.checkpoint()
        used = list(dict.fromkeys(o[0] for o in owners))
        source, blob_key, frame_no = owners[best]
        frame = preprocess.load_frames(self.archive.blobs.read(blob_key), window=spec.windowing)[frame_no]
        read = Read(study_uid=study_uid, model=name, version=version, package_sha256=model.package_sha256,
                    labels=model.labels, probabilities=[float(x) for x in p], inputs=used,
                    explained=source, key=req["key"])
        now = time.gmtime(self.fhir.clock() / 1_000_000)
        stamp = (time.strftime("%Y%m%d", now), time.strftime("%H%M%S", now))
        sr = dicom_out.structured_report(read, header, stamp)
        picture = overlay(frame, heat)
        sc = dicom_out.secondary_capture(read, header, picture, stamp)
        self._store(study_uid, {read.uid("sr"): sr, read.uid("sc"): sc})
        control.checkpoint()
        summary = self.archive.study_summary(study_uid)
        patient = (summary or {}).get("patient_fhir_id") or req.get("patient")
        if not patient:
            raise MedcloudError(f"study {study_uid} is not linked to a FHIR Patient yet")
        ids = self._write_fhir(read, patient, (summary or {}).get("fhir_id"), time.strftime("%Y-%m-%dT%H:%M:%SZ", now),
                               heatmap_png(picture))
        return {"study": study_uid, "model": name, "version": version, "label": read.label,
                "probabilities": dict(zip(read.labels, read.probabilities, strict=True)),
                "images": len(used), "skipped": skipped, "report": f"DiagnosticReport/{ids['report']}",
                "device": f"Device/{ids['device']}", "observations": [f"Observation/{o}" for o in ids["observations"]],
                "media": f"Media/{ids['media']}",
                "sr": read.uid("sr"), "heatmap": read.uid("sc"), "patient": patient}

    def _store(self, study_uid: str, instances: dict[str, bytes]) -> None:
        """Store what is not stored yet (a retried job finds its outputs from the attempt before)."""
        try:
            stored = {r.sop_uid for r in self.archive.instances(study_uid)}
        except NotFound:
            stored = set()
        todo = [data for uid, data in instances.items() if uid not in stored]
        for result in self.archive.store_many(todo, study_uid=study_uid):
            if not result.stored:
                raise MedcloudError(f"storing AI output {result.sop_instance_uid} failed: "
                                    f"0x{result.status:04X} {result.reason}")

    def _write_fhir(self, read: Read, patient: str, imaging_study: str | None, when: str,
                    heatmap: bytes) -> dict[str, Any]:
        base = _id("ai", read.study_uid, read.model, read.version)
        device_id = _id("ai-device", read.model, read.version)
        obs_ids = [f"{base}-p{i}" for i in range(len(read.labels))]
        bundle = report_bundle(read, patient, imaging_study, when, base, device_id, obs_ids, heatmap)
        if router.handle(self.fhir, FhirRequest("GET", f"Device/{device_id}")).status == 200:
            bundle["entry"] = bundle["entry"][1:]  # the model's Device is written once, not a version per read
        resp = router.handle(self.fhir, FhirRequest("POST", "", body=bundle, content_type="application/fhir+json"))
        if resp.status >= 300:
            raise MedcloudError(f"the FHIR transaction of the read answered {resp.status}: {resp.resource}")
        return {"report": base, "device": device_id, "observations": obs_ids, "media": f"{base}-heatmap"}


HEATMAP_MAX_SIDE = 384  # px: the FHIR copy is a preview; the full-size heatmap is the DICOM SC


def heatmap_png(picture: np.ndarray) -> bytes:
    """The overlay as a PNG no larger than ``HEATMAP_MAX_SIDE`` on its longer side."""
    from PIL import Image

    from medcloud.ai.runtime import png

    h, w = picture.shape[:2]
    if max(h, w) > HEATMAP_MAX_SIDE:
        scale = HEATMAP_MAX_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        picture = np.asarray(Image.fromarray(picture, mode="RGB").resize(size, Image.Resampling.LANCZOS))
    return png(picture)


def report_bundle(read: Read, patient: str, imaging_study: str | None, when: str, report_id: str,
                  device_id: str, obs_ids: list[str], heatmap: bytes | None = None) -> dict[str, Any]:
    """The transaction Bundle: Device, one Observation per class probability, the heatmap as a Media
    (the explanation, readable without a DICOM viewer), the DiagnosticReport linking them."""
    subject = {"reference": f"Patient/{patient}"}
    device_ref = {"reference": f"Device/{device_id}", "display": f"{read.model} {read.version}"}
    study_ref = [{"reference": f"ImagingStudy/{imaging_study}"}] if imaging_study else []
    category = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                             "display": "Radiology"}]}]
    device = {
        "resourceType": "Device", "id": device_id, "status": "active",
        "identifier": [{"system": f"{SYSTEM}:package-sha256", "value": read.package_sha256}],
        "deviceName": [{"name": read.model, "type": "model-name"}],
        "type": {"text": "AI image classification model (ONNX)"},
        "version": [{"value": read.version}],
    }
    entries: list[dict[str, Any]] = [_put(device)]
    for oid, label, p in zip(obs_ids, read.labels, read.probabilities, strict=True):
        entries.append(_put({
            "resourceType": "Observation", "id": oid, "status": "preliminary",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "imaging", "display": "Imaging"}]}],
            "code": {"coding": [{"system": f"{SYSTEM}:{read.model}", "code": f"probability-{label}",
                                 "display": f"Probability of {label}"}], "text": f"AI probability of {label}"},
            "subject": subject, "effectiveDateTime": when, "issued": when, "device": device_ref,
            "valueQuantity": {"value": round(p, 6), "unit": "probability", "system": "http://unitsofmeasure.org",
                              "code": "1"},
            "derivedFrom": study_ref,
        }))
    label = read.label
    p_top = read.probabilities[read.labels.index(label)]
    explained = (f"Occlusion sensitivity for {label}: the brighter (red) a region, the more hiding it lowers "
                 f"the model's probability of {label}. Image: series {read.explained.series_uid}, instance "
                 f"{read.explained.sop_uid}.")
    media_links: list[dict[str, Any]] = []
    if heatmap is not None:
        media_id = f"{report_id}-heatmap"
        entries.append(_put({
            "resourceType": "Media", "id": media_id, "status": "completed",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{read.uid('sc')}"}],
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/media-type", "code": "image",
                                 "display": "Image"}]},
            "subject": subject, "createdDateTime": when, "issued": when, "device": device_ref,
            "content": {"contentType": "image/png", "data": base64.b64encode(heatmap).decode("ascii"),
                        "title": f"AI heatmap: {label} ({read.model} {read.version})"},
            "note": [{"text": explained}],
        }))
        media_links.append({"comment": explained, "link": {"reference": f"Media/{media_id}"}})
    report = {
        "resourceType": "DiagnosticReport", "id": report_id, "status": "preliminary",
        "extension": [{"url": DEVICE_EXTENSION, "valueReference": device_ref}],
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{read.uid('sr')}"}],
        "category": category,
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4",
                             "display": "Diagnostic imaging study"}], "text": f"AI read ({read.model})"},
        "subject": subject, "effectiveDateTime": when, "issued": when,
        "result": [{"reference": f"Observation/{o}"} for o in obs_ids],
        "imagingStudy": study_ref,
        **({"media": media_links} if media_links else {}),
        "conclusion": (f"{label} (probability {p_top:.2f}) by AI model {read.model} {read.version}, mean over "
                       f"{len(read.inputs)} image(s). Computer-generated and preliminary: not reviewed by a clinician."),
        "conclusionCode": [{"coding": [{"system": f"{SYSTEM}:{read.model}", "code": label, "display": label}],
                            "text": label}],
    }
    entries.append(_put(report))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def applies(rule: AppliesTo, c: Candidate) -> bool:
    """An empty list does not restrict; comparisons ignore case (body parts come in either)."""
    return ((not rule.modalities or c.modality.upper() in {m.upper() for m in rule.modalities})
            and (not rule.body_parts or c.body_part.upper() in {b.upper() for b in rule.body_parts})
            and (not rule.sop_classes or c.sop_class_uid in rule.sop_classes))


def read_key(study_uid: str, model: str, version: str, sop_uids: Iterable[str]) -> str:
    h = hashlib.sha256("\n".join([study_uid, model, version, *sorted(sop_uids)]).encode())
    return h.hexdigest()


def _candidates(summary: dict[str, Any]) -> list[Candidate]:
    """The study's image instances that may be read: not SR/documents, not our own outputs."""
    out = []
    for s in summary["series"]:
        if (s.get("series_description") or "").startswith(OUTPUT_MARK):
            continue
        for i in s["instances"]:
            if i["sop_class_uid"].startswith(_NON_IMAGE_PREFIXES):
                continue
            out.append(Candidate(s["series_uid"], i["sop_uid"], i["sop_class_uid"], s.get("modality") or "",
                                 s.get("body_part_examined") or ""))
    return out


def _header(data: bytes) -> Any:
    import io

    import pydicom

    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def _id(*parts: str) -> str:
    """A FHIR id (``[A-Za-z0-9-.]{1,64}``) derived from ``parts``: the same read, the same id."""
    return f"{parts[0]}-" + hashlib.sha256("\n".join(parts[1:]).encode()).hexdigest()[:40]


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}
