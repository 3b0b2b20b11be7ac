"""The DIMSE SCP: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET in front of the ``Archive`` (pynetdicom).

Why it looks like this:

* C-STORE hands ``event.encoded_dataset()`` (preamble + File Meta built from the request + the
  data set bytes exactly as received, in the negotiated transfer syntax) to ``Archive.store``, so
  DIMSE and STOW-RS share one parser, one validation, one "nothing half-stored" transaction and
  one error -> status table (``imaging/status.py``). We never decode and re-encode the data set.
* C-FIND translates the identifier into a QIDO query (``find.py``): one matcher for both protocols.
* Instances are read through the blob store (``archive.blobs``), never from files, so encryption
  at rest (``SealedBlobStore``) is transparent.
* C-MOVE/C-GET send each instance in its stored transfer syntax when the peer accepted it, else
  decompress to Explicit VR Little Endian when the peer accepted only uncompressed syntaxes.
* Calling AE titles are checked against ``dicom_remotes`` (association rejected, reason 3, "calling
  AE title not recognised") unless ``dicom_allow_unknown``; an empty remote list refuses everyone.
* Study-change hooks (the FHIR ImagingStudy PUT) are batched: C-STOREs store through a copy of the
  archive without hooks and the changed studies are handed to the real hooks when the association
  ends and every ``FLUSH_SECONDS`` while it lasts. Per instance, the PUT of a growing ImagingStudy
  cost more than the store itself (O(n^2) over a 500-instance study).
* C-STOREs are group-committed (``imaging/group_commit.py``, shared with STOW-RS): every
  association's handler thread parses its instance and hands it to one writer thread, which stores
  whatever is queued in one transaction (one bad instance still fails alone).
  Handler threads no longer queue on the database's write lock one BEGIN at a time, patient/study/
  series rows are written once per batch, and the C-STORE-RSP still leaves only after the commit.
* With ``dicom_fast_store`` (default) the port is served by ``acceptor.py``: C-STORE/C-ECHO-only
  associations run on one asyncio loop instead of pynetdicom's two polling threads each (≈ 1.5 ms
  of CPU per instance); everything else is proxied to this pynetdicom server on an internal port.
  Both paths store through ``c_store`` (one status mapping).
* pynetdicom does not set TCP_NODELAY; every accepted socket gets it here (small PDUs such as a
  C-STORE-RSP otherwise wait on Nagle + delayed ACK).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_context, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from medcloud.config import RemoteAE, Settings
from medcloud.errors import Invalid, MedcloudError
from medcloud.imaging import status
from medcloud.imaging.archive import Archive, InstanceRef
from medcloud.imaging.dimse import find
from medcloud.imaging.dimse.acceptor import AcceptorConfig, StoreAcceptor
from medcloud.imaging.dimse.remotes import find_remote
from medcloud.imaging.group_commit import GroupCommit

log = logging.getLogger("medcloud.dimse")

# SOP classes (PS3.4 Annex A/C; pynetdicom.sop_class builds these names dynamically, so spelled out).
Verification = "1.2.840.10008.1.1"
PatientRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.1.1"
PatientRootQueryRetrieveInformationModelMove = "1.2.840.10008.5.1.4.1.2.1.2"
PatientRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.1.3"
StudyRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.2.1"
StudyRootQueryRetrieveInformationModelMove = "1.2.840.10008.5.1.4.1.2.2.2"
StudyRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.2.3"
# Accepted for C-STORE and offered for C-GET/C-MOVE sub-operations (PS3.5 §10, Annex A).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
)
FIND_MODELS: dict[str, find.Model] = {
    PatientRootQueryRetrieveInformationModelFind: "patient",
    StudyRootQueryRetrieveInformationModelFind: "study",
}
MOVE_MODELS: dict[str, find.Model] = {
    PatientRootQueryRetrieveInformationModelMove: "patient",
    StudyRootQueryRetrieveInformationModelMove: "study",
}
GET_MODELS: dict[str, find.Model] = {
    PatientRootQueryRetrieveInformationModelGet: "patient",
    StudyRootQueryRetrieveInformationModelGet: "study",
}
PENDING = 0xFF00
CANCEL = 0xFE00
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
MAX_PDU = 256 * 1024  # larger PDUs: fewer reads per 512x512 CT (dcmtk sends up to the peer's maximum)


FLUSH_SECONDS = 2.0


class StudyChanges:
    """Studies stored since the last flush; ``flush`` runs the archive's ``on_change`` hooks once each."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self._studies: set[str] = set()
        self._lock = threading.Lock()

    def add(self, study: str) -> None:
        with self._lock:
            self._studies.add(study)

    def flush(self) -> None:
        with self._lock:
            studies, self._studies = self._studies, set()
        if not studies:
            return
        for hook in self.archive.on_change:
            try:
                hook(studies)
            except Exception:  # noqa: BLE001 - the images are stored; the next change repairs the link
                log.exception("imaging change hook failed for %d studies", len(studies))


class _ReusePortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, bound with SO_REUSEPORT so several SCP processes share one port."""

    def server_bind(self) -> None:
        if hasattr(socket, "SO_REUSEPORT") and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class _AE(AE):
    """An AE whose allowed calling titles come from the settings (pynetdicom treats [] as "anyone")."""

    def __init__(self, ae_title: str, allowed: list[str] | None):
        super().__init__(ae_title=ae_title)
        self._allowed = allowed

    @property
    def require_calling_aet(self) -> list[str]:
        if self._allowed is None:
            return []
        # A list that matches no real title when nothing is configured: pynetdicom reads [] as "allow all".
        return self._allowed or ["\x00no-calling-ae-is-allowed"]

    @require_calling_aet.setter
    def require_calling_aet(self, values: list[str]) -> None:
        self._allowed = list(values)


def set_nodelay(sock: socket.socket | None) -> None:
    """Disable Nagle on a DIMSE socket (request/response PDUs are small and latency-bound)."""
    if sock is None:
        return
    with contextlib.suppress(OSError):  # closed already: nothing to tune
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def status_ds(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO: 64 characters
    return ds


def storage_contexts_count(pairs: set[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """The (SOP class, encapsulated syntax or None) contexts ``storage_contexts`` would propose."""
    out: list[tuple[str, str | None]] = []
    for sop_class in sorted({c for c, _ in pairs}):
        out += [(sop_class, ts) for ts in sorted({t for c, t in pairs if c == sop_class and UID(t).is_encapsulated})]
        out.append((sop_class, None))
    return out


def storage_contexts(pairs: set[tuple[str, str]], *, strict: bool = True) -> list[PresentationContext]:
    """Contexts to propose for sending instances of these (SOP class, transfer syntax) pairs.

    Each encapsulated syntax gets its own context (the acceptor accepts or refuses it alone) and
    each SOP class one more with both uncompressed syntaxes to fall back on. At most 128 (PS3.8):
    ``strict`` raises beyond that (the SCU splits its batches first); otherwise (C-MOVE) the
    encapsulated contexts are dropped first, so those instances travel decompressed, and classes
    beyond 128 fail their sub-operations.
    """
    wanted = storage_contexts_count(pairs)
    if len(wanted) > 128:
        if strict:
            raise Invalid(f"{len(wanted)} presentation contexts needed; an association carries at most 128")
        plain = [w for w in wanted if w[1] is None]
        wanted = (plain + [w for w in wanted if w[1] is not None])[:128]
    return [build_context(c, [ts]) if ts else build_context(c, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            for c, ts in wanted]


def fit_to_contexts(ds: Dataset, accepted: list[PresentationContext]) -> Dataset:
    """Decompress ``ds`` when its encapsulated syntax was not accepted but an uncompressed one was."""
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if not ts.is_encapsulated:
        return ds
    offered = {UID(c.transfer_syntax[0]) for c in accepted if c.abstract_syntax == ds.SOPClassUID}
    if ts in offered:
        return ds
    if any(not t.is_encapsulated and not t.is_deflated for t in offered):
        # -> Explicit VR Little Endian; the same instance, so the same SOP Instance UID (PS3.5 §8.2)
        ds.decompress(generate_instance_uid=False)
    return ds


class DimseServer:
    """The archive's DICOM SCP; ``start()`` binds and serves in background threads, ``stop()`` ends it."""

    def __init__(self, archive: Archive, settings: Settings, *, host: str | None = None, port: int | None = None):
        self.archive = archive
        self.settings = settings
        self.host = host if host is not None else settings.host
        self.port = port if port is not None else settings.dicom_port
        self.ae_title = settings.dicom_ae_title
        self._server: ThreadedAssociationServer | None = None
        self._acceptor: StoreAcceptor | None = None
        self._lock = threading.Lock()
        self.changes = StudyChanges(archive)
        # hooks run batched, see above; stores are group-committed by one writer thread
        self._writer = GroupCommit(dataclasses.replace(archive, on_change=[]))
        self._stopping = threading.Event()
        self._stop_requested = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def build_ae(self) -> AE:
        allowed = None if self.settings.dicom_allow_unknown else [r.title for r in self.settings.dicom_remotes]
        ae = _AE(self.ae_title, allowed)
        ae.maximum_pdu_size = MAX_PDU
        ae.maximum_associations = 32
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            # scp_role/scu_role: accept the SCP/SCU role selection getscu proposes, so C-GET can
            # send its C-STORE sub-operations back over the same association.
            ae.add_supported_context(str(cx.abstract_syntax), list(TRANSFER_SYNTAXES), scu_role=True, scp_role=True)
        for uid in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS):
            ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        return ae

    def start(self) -> int:
        """Bind and serve; returns the bound port. Raises OSError when the port is taken."""
        with self._lock:
            if self._server is not None:
                return self.port
            # The ImagingStudy link validates ImagingStudy and Patient resources: compile those
            # validators before the first association (≈1 s of CPU that would land on the first flush).
            from medcloud.fhir.validation import warm

            warm(("ImagingStudy", "Patient"))
            logging.getLogger("pynetdicom").setLevel(logging.WARNING)
            _config.UNRESTRICTED_STORAGE_SERVICE = True  # private/new storage SOP classes too
            # pynetdicom's "standard" handlers format every PDU/DIMSE message for its debug log even
            # when nothing is logged; off, a 64x64 C-STORE costs measurably less CPU.
            _config.LOG_HANDLER_LEVEL = "none"
            _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
            ae = self.build_ae()
            handlers: list[Any] = [
                (evt.EVT_C_ECHO, self._on_echo),
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_C_FIND, self._on_find),
                (evt.EVT_C_MOVE, self._on_move),
                (evt.EVT_C_GET, self._on_get),
                (evt.EVT_RELEASED, self._on_end),
                (evt.EVT_ABORTED, self._on_end),
                (evt.EVT_CONN_CLOSE, self._on_end),
            ]
            # With the lean acceptor in front, pynetdicom listens on an internal port and gets the
            # associations the acceptor does not serve (acceptor.py); otherwise on the DIMSE port.
            fast = self.settings.dicom_fast_store
            address = ("127.0.0.1", 0) if fast else (self.host, self.port)
            server = ae.make_server(address, evt_handlers=handlers, server_class=_ReusePortServer)
            threading.Thread(target=server.serve_forever, name=f"dimse-acceptor:{self.port}", daemon=True).start()
            ae._servers.append(server)  # as AE.start_server does: server.shutdown() removes it
            accept = server.get_request

            def get_request() -> tuple[socket.socket, tuple[str, int]]:
                sock, addr = accept()
                set_nodelay(sock)
                return sock, addr

            server.get_request = get_request  # type: ignore[method-assign]
            self._server = server
            wanted, self.port = self.port, server.server_address[1]
            if fast:
                try:
                    self._acceptor = self._build_acceptor(ae, server, wanted)
                    self.port = self._acceptor.start()
                except BaseException:  # the DIMSE port is taken: nothing may keep running
                    self._acceptor, self._server, self.port = None, None, wanted
                    server.shutdown()
                    raise
            self._stopping.clear()
            self._stop_requested.clear()
            self._flusher = threading.Thread(target=self._flush_loop, name="dimse-study-changes", daemon=True)
            self._flusher.start()
            log.info("DIMSE SCP %s listening on %s:%d", self.ae_title, self.host, self.port)
            return self.port

    @property
    def acceptor(self) -> StoreAcceptor | None:
        """The lean C-STORE/C-ECHO acceptor in front of pynetdicom (None when ``dicom_fast_store`` is off)."""
        return self._acceptor

    def _build_acceptor(self, ae: AE, server: ThreadedAssociationServer, port: int) -> StoreAcceptor:
        internal_port = server.server_address[1]
        return StoreAcceptor(AcceptorConfig(
            host=self.host, port=port, ae_title=self.ae_title,
            allowed_callers=None if self.settings.dicom_allow_unknown else [r.title for r in self.settings.dicom_remotes],
            supported_contexts=list(ae.supported_contexts),
            implementation_class_uid=str(ae.implementation_class_uid),
            implementation_version_name=ae.implementation_version_name,
            max_pdu=MAX_PDU, max_associations=ae.maximum_associations,
            max_instance_bytes=self.settings.dicom_max_instance_mb * 1024 * 1024 + MAX_PDU,
            store=self.c_store, on_end=self.changes.flush,
            handoff_port=lambda: internal_port,
            handoff_active=lambda: len(ae.active_associations)))

    def stop(self) -> None:
        with self._lock:
            if self._acceptor is not None:
                self._acceptor.stop()
                self._acceptor = None
            if self._server is not None:
                self._server.shutdown()
                self._server = None
            self._stopping.set()
            if self._flusher is not None:
                self._flusher.join(timeout=10)
                self._flusher = None
        self.changes.flush()

    def _flush_loop(self) -> None:
        while not self._stopping.wait(FLUSH_SECONDS):
            self.changes.flush()

    def request_stop(self) -> None:
        """Ask ``serve_forever`` to stop and return (safe from a signal handler: it only sets a flag)."""
        self._stop_requested.set()

    def serve_forever(self) -> None:
        """Start (if needed) and block until ``request_stop()`` or ``stop()`` (another thread, a signal)."""
        self.start()
        try:
            while self._server is not None and not self._stop_requested.wait(0.5):
                pass
        finally:
            self.stop()

    # -- handlers --------------------------------------------------------------------------

    def _on_end(self, event: Any) -> None:
        self.changes.flush()

    def _on_echo(self, event: Any) -> int:
        return status.SUCCESS

    def _on_store(self, event: Any) -> Dataset:
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as e:  # noqa: BLE001 - undecodable request: a status, not a dropped association
            return status_ds(status.CANNOT_UNDERSTAND, f"cannot read the data set: {type(e).__name__}")
        return status_ds(*self.c_store(data, event.assoc.requestor.ae_title,
                                       str(event.request.AffectedSOPInstanceUID)))

    def c_store(self, data: bytes, calling_ae: str, sop_instance_uid: str) -> tuple[int, str | None]:
        """Store one Part-10 instance for a C-STORE (either acceptor): its status and error comment."""
        try:
            result = self._writer.store(data)
        except Exception:  # noqa: BLE001 - the archive reports per-instance; this is a fault
            log.exception("C-STORE of %s failed", sop_instance_uid)
            return status.PROCESSING_FAILURE, "internal error while storing"
        if result.stored:
            if result.study_uid:
                self.changes.add(result.study_uid)
            if result.warnings:
                return result.warnings[0][0], result.warnings[0][1]
            return status.SUCCESS, None
        log.info("C-STORE %s from %s refused: 0x%04X %s", result.sop_instance_uid, calling_ae,
                 result.status, result.reason)
        return result.status, result.reason

    def _on_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        model = FIND_MODELS.get(str(event.request.AffectedSOPClassUID), "study")
        try:
            req = find.to_query(event.identifier, model, self.archive.config.extra_tags)
            for ds in find.run(self.archive.db, req, retrieve_aet=self.ae_title):
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                yield PENDING, ds
        except MedcloudError as e:
            yield status_ds(IDENTIFIER_DOES_NOT_MATCH, e.message), None
        except Exception:  # noqa: BLE001
            log.exception("C-FIND failed")
            yield status_ds(UNABLE_TO_PROCESS, "internal error while searching"), None

    def _refs(self, event: Any, models: dict[str, find.Model]) -> list[InstanceRef] | MedcloudError:
        model = models.get(str(event.request.AffectedSOPClassUID), "study")
        try:
            return find.retrieve_refs(self.archive, event.identifier, model)
        except MedcloudError as e:
            return e

    def _load(self, ref: InstanceRef) -> Dataset | None:
        try:
            return pydicom.dcmread(io.BytesIO(self.archive.blobs.read(ref.blob_key)))
        except Exception:  # noqa: BLE001 - a missing/unreadable blob fails one sub-operation
            log.exception("cannot read stored instance %s", ref.sop_uid)
            return None

    def _sub_operations(self, event: Any, refs: list[InstanceRef],
                        accepted: list[list[PresentationContext]]) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        for ref in refs:
            if event.is_cancelled:
                yield CANCEL, None
                return
            ds = self._load(ref)
            if ds is None:
                bad = Dataset()
                bad.SOPInstanceUID = ref.sop_uid  # no SOP Class: the sub-operation fails and is listed
                yield PENDING, bad
                continue
            try:
                ds = fit_to_contexts(ds, accepted[0] if accepted else [])
            except Exception:  # noqa: BLE001 - not decodable: send as stored; the sub-op fails if refused
                log.warning("cannot decompress %s for the peer", ref.sop_uid)
            yield PENDING, ds

    def _on_get(self, event: Any) -> Iterator[Any]:
        refs = self._refs(event, GET_MODELS)
        if isinstance(refs, MedcloudError):
            yield 1
            yield status_ds(IDENTIFIER_DOES_NOT_MATCH, refs.message), None
            return
        yield len(refs)
        yield from self._sub_operations(event, refs, [list(event.assoc.accepted_contexts)])

    def _on_move(self, event: Any) -> Iterator[Any]:
        dest: RemoteAE | None = find_remote(self.settings.dicom_remotes, str(event.move_destination or ""))
        if dest is None:
            log.info("C-MOVE to unknown destination %r refused", event.move_destination)
            yield None, None  # -> 0xA801 Move Destination unknown
            return
        refs = self._refs(event, MOVE_MODELS)
        accepted: list[list[PresentationContext]] = []

        def on_accepted(ev: Any) -> None:
            set_nodelay(getattr(ev.assoc.dul.socket, "socket", None))
            accepted.append(list(ev.assoc.accepted_contexts))

        pairs = {(r.sop_class_uid, r.transfer_syntax_uid) for r in refs} if isinstance(refs, list) else set()
        contexts = storage_contexts(pairs, strict=False) if pairs else [build_context(Verification)]
        yield dest.host, dest.port, {"ae_title": dest.title, "contexts": contexts,
                                     "evt_handlers": [(evt.EVT_ACCEPTED, on_accepted)]}
        if isinstance(refs, MedcloudError):
            yield 1
            yield status_ds(IDENTIFIER_DOES_NOT_MATCH, refs.message), None
            return
        yield len(refs)
        yield from self._sub_operations(event, refs, accepted)


@contextlib.contextmanager
def running(settings: Settings, *, port: int | None = None) -> Iterator[DimseServer | None]:
    """The SCP for ``medcloud serve``: its own Services in this (the parent) process, plus
    ``dicom_processes - 1`` more processes on the same port (``pool.py``); nothing when the port is 0.
    uvicorn ``--workers N`` forks N app processes; none of them binds the DIMSE port.

    Raises OSError when the port cannot be bound (the caller reports it and exits).
    """
    from medcloud.app import build_services
    from medcloud.imaging.dimse.pool import ScpPool, process_count

    p = settings.dicom_port if port is None else port
    if p == 0:
        yield None
        return
    services = build_services(settings, migrate=False)
    pool = ScpPool()
    try:
        assert services.imaging is not None
        server = DimseServer(services.imaging, settings, port=p)
        # The extra processes first: associations last long, and whichever process listens first
        # would otherwise take every one that arrives while the others are still starting.
        pool.start(settings, p, process_count(settings) - 1)
        try:
            server.start()
            yield server
        finally:
            pool.stop()
            server.stop()
    finally:
        services.close()
