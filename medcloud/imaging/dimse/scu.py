"""The DIMSE SCU: C-ECHO, C-STORE, C-FIND and C-MOVE to remote modalities and PACS (pynetdicom).

Errors a user can act on are raised as ``DimseError`` with a one-line message (connection refused,
association rejected with the peer's reason, no accepted presentation context); per-file C-STORE
outcomes are returned, never raised, so a directory send reports every file.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association

from medcloud.config import RemoteAE
from medcloud.errors import Invalid, MedcloudError
from medcloud.imaging.dimse import scp
from medcloud.imaging.dimse.find import QR_LEVELS

TIMEOUT = 30.0
MODELS = {
    "find": {"patient": scp.PatientRootQueryRetrieveInformationModelFind,
             "study": scp.StudyRootQueryRetrieveInformationModelFind},
    "move": {"patient": scp.PatientRootQueryRetrieveInformationModelMove,
             "study": scp.StudyRootQueryRetrieveInformationModelMove},
}
# Returned by default when ``find`` is given no keys of its own (the unique key of each level and friends).
DEFAULT_KEYS = {
    "PATIENT": ("PatientID", "PatientName", "PatientBirthDate", "NumberOfPatientRelatedStudies"),
    "STUDY": ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "AccessionNumber", "StudyDescription",
              "ModalitiesInStudy", "NumberOfStudyRelatedInstances"),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
               "NumberOfSeriesRelatedInstances"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}


class DimseError(MedcloudError):
    """The peer could not be reached, refused the association, or failed the whole operation."""

    def __init__(self, message: str, *, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class SendResult:
    path: Path
    sop_uid: str | None
    status: int | None  # None: never sent (not DICOM, no accepted context, association lost)
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0 or self.status & 0xF000 == 0xB000)


@dataclass(frozen=True, slots=True)
class MoveResult:
    status: int
    completed: int
    failed: int
    warning: int
    comment: str = ""


@contextmanager
def associate(calling: str, remote: RemoteAE, contexts: list[Any]) -> Iterator[Association]:
    """An established association, released on exit; raises DimseError with the reason otherwise."""
    try:  # a plain connect first tells "refused"/"timed out" apart from an association rejection
        socket.create_connection((remote.host, remote.port), timeout=TIMEOUT).close()
    except OSError as e:
        raise DimseError(f"cannot connect to {remote.host}:{remote.port}: {e.strerror or e}", exit_code=3) from e
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.maximum_pdu_size = scp.MAX_PDU
    rejection: list[Any] = []
    handlers: list[Any] = [(evt.EVT_REJECTED, lambda ev: rejection.append(ev.assoc.acceptor.primitive)),
                (evt.EVT_ACCEPTED, lambda ev: scp.set_nodelay(getattr(ev.assoc.dul.socket, "socket", None)))]
    assoc = ae.associate(remote.host, remote.port, contexts=contexts, ae_title=remote.title, evt_handlers=handlers)
    if not assoc.is_established:
        if assoc.is_rejected:
            why = _rejection(rejection[0] if rejection else None, calling, remote.title)
            raise DimseError(f"association rejected by {remote.title}@{remote.host}:{remote.port}: {why}",
                             exit_code=4)
        raise DimseError(f"association with {remote.title}@{remote.host}:{remote.port} failed "
                         "(aborted or timed out)", exit_code=4)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _rejection(primitive: Any, calling: str, called: str) -> str:
    """The A-ASSOCIATE-RJ reason in words (PS3.8 §9.3.4); the PDU names no titles, so we add ours."""
    if primitive is None:
        return "no reason given"
    reasons: dict[tuple[Any, Any], str] = {(1, 1): "no reason given", (1, 2): "application context not supported",
               (1, 3): f"calling AE title {calling} not recognised",
               (1, 7): f"called AE title {called} not recognised",
               (2, 2): "protocol version not supported", (3, 1): "temporary congestion",
               (3, 2): "local limit exceeded"}
    src = getattr(primitive, "result_source", None)
    diag = getattr(primitive, "diagnostic", None)
    return reasons.get((src, diag), f"source {src}, reason {diag}")


def echo(calling: str, remote: RemoteAE) -> int:
    with associate(calling, remote, [build_context(scp.Verification)]) as assoc:
        rsp = assoc.send_c_echo()
        if "Status" not in rsp:
            raise DimseError("no C-ECHO response (timed out or aborted)")
        return int(rsp.Status)


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    """Files under ``paths`` (directories recursively, sorted); missing paths raise Invalid."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise Invalid(f"no such file or directory: {p}")
    return out


def send(calling: str, remote: RemoteAE, files: list[Path],
         progress: Callable[[SendResult], None] | None = None) -> list[SendResult]:
    """C-STORE every file; one result per file, in order (non-DICOM files fail without being sent)."""
    results: dict[Path, SendResult] = {}
    headers: dict[Path, tuple[str, str, str]] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
            headers[f] = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), str(ds.SOPInstanceUID))
        except (InvalidDicomError, AttributeError, OSError, ValueError, TypeError) as e:
            results[f] = SendResult(f, None, None, f"not a readable DICOM Part-10 file: {type(e).__name__}: {e}")
            if progress:
                progress(results[f])
    for batch in _batches(headers):
        pairs = {(headers[f][0], headers[f][1]) for f in batch}
        with associate(calling, remote, scp.storage_contexts(pairs)) as assoc:
            for f in batch:
                r = _send_one(assoc, f, headers[f][2])
                results[f] = r
                if progress:
                    progress(r)
    return [results[f] for f in files]


def _batches(headers: dict[Path, tuple[str, str, str]]) -> list[list[Path]]:
    """Split files so no association needs more than 128 presentation contexts."""
    batches: list[list[Path]] = []
    current: list[Path] = []
    pairs: set[tuple[str, str]] = set()
    for f, (cls, ts, _) in sorted(headers.items(), key=lambda kv: (kv[1][0], kv[1][1], str(kv[0]))):
        trial = pairs | {(cls, ts)}
        if current and len(scp.storage_contexts_count(trial)) > 128:
            batches.append(current)
            current, trial = [], {(cls, ts)}
        current.append(f)
        pairs = trial
    if current:
        batches.append(current)
    return batches


def _send_one(assoc: Association, f: Path, sop_uid: str) -> SendResult:
    if not assoc.is_established:
        return SendResult(f, sop_uid, None, "the association was lost before this file")
    try:
        ds: Dataset = pydicom.dcmread(f)
        ds = scp.fit_to_contexts(ds, list(assoc.accepted_contexts))
        rsp = assoc.send_c_store(ds)
    except ValueError as e:  # no accepted presentation context for this SOP class / transfer syntax
        return SendResult(f, sop_uid, None, str(e).splitlines()[0])
    except Exception as e:  # noqa: BLE001 - unreadable/undecodable file: report it, send the rest
        return SendResult(f, sop_uid, None, f"{type(e).__name__}: {e}")
    if "Status" not in rsp:
        return SendResult(f, sop_uid, None, "no C-STORE response (timed out or aborted)")
    return SendResult(f, sop_uid, int(rsp.Status), str(rsp.get("ErrorComment", "") or ""))


def identifier(level: str, keys: list[str]) -> Dataset:
    """A query/retrieve identifier from ``Keyword=value`` / ``Keyword`` / ``gggg,eeee=value`` strings."""
    level = level.upper()
    if level not in QR_LEVELS:
        raise Invalid(f"--level must be one of {', '.join(QR_LEVELS)}, not {level!r}")
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for item in keys:
        name, _, value = item.partition("=")
        tag = _tag(name.strip())
        vr = dictionary_VR(tag)
        if vr == "SQ":
            raise Invalid(f"{name}: sequence keys are not supported on the command line")
        with warnings.catch_warnings():  # "DOE*", "2024-" are matching keys, not valid PN/DA values
            warnings.simplefilter("ignore")
            ds.add_new(tag, vr, value if value != "" else None)
    return ds


def _tag(name: str) -> int:
    hexed = name.strip("()").replace(",", "")
    if len(hexed) == 8 and all(c in "0123456789abcdefABCDEF" for c in hexed):
        tag = int(hexed, 16)
    else:
        found = tag_for_keyword(name)
        if found is None:
            raise Invalid(f"{name!r} is neither a DICOM keyword nor a tag (gggg,eeee)")
        tag = found
    try:
        dictionary_VR(tag)
    except KeyError as e:
        raise Invalid(f"{name!r} is not in the DICOM data dictionary") from e
    return tag


def find(calling: str, remote: RemoteAE, model: str, query: Dataset) -> list[Dataset]:
    """C-FIND; the matches in order. A failure status raises DimseError."""
    uid = MODELS["find"][model]
    out: list[Dataset] = []
    with associate(calling, remote, [build_context(uid)]) as assoc:
        for st, ident in assoc.send_c_find(query, uid):
            if "Status" not in st:
                raise DimseError("no C-FIND response (timed out or aborted)")
            code = int(st.Status)
            if code in (0xFF00, 0xFF01):
                if ident is not None:
                    out.append(ident)
            elif code != 0x0000:
                raise DimseError(f"C-FIND failed: status 0x{code:04X} {st.get('ErrorComment', '') or ''}".rstrip())
    return out


def move(calling: str, remote: RemoteAE, destination: str, model: str, query: Dataset) -> MoveResult:
    """C-MOVE to ``destination`` (an AE the remote knows); the final counts and status."""
    uid = MODELS["move"][model]
    final: MoveResult | None = None
    with associate(calling, remote, [build_context(uid)]) as assoc:
        for st, _ in assoc.send_c_move(query, destination, uid):
            if "Status" not in st:
                raise DimseError("no C-MOVE response (timed out or aborted)")
            code = int(st.Status)
            if code in (0xFF00, 0xFF01):
                continue
            final = MoveResult(code, int(st.get("NumberOfCompletedSuboperations", 0) or 0),
                               int(st.get("NumberOfFailedSuboperations", 0) or 0),
                               int(st.get("NumberOfWarningSuboperations", 0) or 0),
                               str(st.get("ErrorComment", "") or ""))
    if final is None:
        raise DimseError("no final C-MOVE response")
    return final
