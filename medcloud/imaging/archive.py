"""The imaging archive: store, find, retrieve and delete DICOM instances (domain; no web framework).

Store order (nothing half-stored): parse and validate in memory; optionally (``stage``, the group
committer does it in the request thread) write each blob to a fsynced temp name no reader sees;
then inside one write transaction (one SAVEPOINT per instance) put or rename the blob into place
and write its index rows (new instance rows in one multi-row INSERT), fsync the touched
directories, commit. An instance whose index write fails has its new blob removed, a staged blob
that is not published is deleted, and if the commit itself fails every blob created by the
request is removed. Study-level counts and ModalitiesInStudy are recomputed in the same
transaction. After the commit, ``on_change`` is told which studies changed (the FHIR ImagingStudy
link, once per study per request). Deletes remove index rows first, blobs after the commit (a crash leaves an orphan file,
never an index row without its file).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from sqlalchemy import Connection, and_, delete, func, insert, select, update

from medcloud.errors import Conflict, Invalid, MedcloudError, NotFound
from medcloud.imaging import status
from medcloud.imaging._parse import Parsed, parse
from medcloud.imaging.blobs import BlobStore, Staged, instance_key, valid_uid
from medcloud.storage.imaging_schema import (
    dicom_extra_index,
    dicom_instances,
    dicom_patients,
    dicom_series,
    dicom_studies,
)
from medcloud.storage.sql.database import Database

log = logging.getLogger("medcloud.imaging")

DuplicatePolicy = Literal["reject", "overwrite"]


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    max_instance_bytes: int = 512 * 1024 * 1024
    duplicates: DuplicatePolicy = "reject"
    patient_id_system: str = "urn:medcloud:dicom:patient-id"
    # A study is "stable" (complete) once no instance arrived for this long (issue 5; the AI subscribes).
    stable_after_seconds: float = 5.0
    # Extra matching keys indexed per instance (8-hex tags; imaging/extra_tags.py).
    extra_tags: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> ArchiveConfig:
        return cls(max_instance_bytes=settings.dicom_max_instance_mb * 1024 * 1024,
                   duplicates=settings.dicom_duplicates, stable_after_seconds=settings.dicom_stable_after,
                   extra_tags=tuple(settings.dicom_extra_tags))


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The outcome for one instance of a store request (PS3.18 §10.5.3: one Referenced/Failed SOP item)."""

    status: int
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    reason: str | None = None
    warnings: tuple[tuple[int, str], ...] = ()

    @property
    def stored(self) -> bool:
        return self.status == status.SUCCESS


@dataclass(frozen=True, slots=True)
class Prepared:
    """One instance after ``Archive.prepare``: parsed, or already refused (``refused`` is its result)."""

    data: bytes
    parsed: Parsed | None
    refused: StoreResult | None
    staged: Staged | None = None  # its blob, written by ``Archive.stage``; ``commit`` publishes it


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """Where one stored instance is and what its frames look like (for WADO-RS retrieve/frames)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    number_of_frames: int | None


@dataclass
class Archive:
    db: Database
    blobs: BlobStore
    config: ArchiveConfig = field(default_factory=ArchiveConfig)
    clock: Callable[[], int] = lambda: time.time_ns() // 1000
    # Told, after each committed change, which studies changed (FHIR ImagingStudy link).
    on_change: list[Callable[[set[str]], None]] = field(default_factory=list)
    # Told which studies became stable (see ``mark_stable``).
    on_stable: list[Callable[[list[str]], None]] = field(default_factory=list)

    # -- store ------------------------------------------------------------------------------

    def store(self, data: bytes, *, study_uid: str | None = None) -> StoreResult:
        """Store one Part-10 instance; see ``store_many``."""
        return self.store_many([data], study_uid=study_uid)[0]

    def store_many(self, items: Iterable[bytes], *, study_uid: str | None = None) -> list[StoreResult]:
        """Store Part-10 instances (one STOW-RS request); one result per item, in order.

        ``study_uid`` (STOW-RS ``/studies/{study}``) rejects instances of other studies (0xA900).
        """
        return self.commit([self.prepare(data, study_uid=study_uid) for data in items])

    def prepare(self, data: bytes, *, study_uid: str | None = None) -> Prepared:
        """Parse and validate one instance (no I/O; any thread may run it); ``commit`` stores it."""
        try:
            p = parse(data, max_bytes=self.config.max_instance_bytes, extra_tags=self.config.extra_tags)
            if study_uid is not None and p.study_uid != study_uid:
                raise Invalid(f"StudyInstanceUID {p.study_uid} does not match the study {study_uid} of the request")
            return Prepared(data, p, None)
        except MedcloudError as e:
            return Prepared(data, None, _failed(e, getattr(e, "parsed", None)))

    def stage(self, prepared: list[Prepared]) -> list[Prepared]:
        """Write the blobs of parsed instances where no reader sees them yet (``BlobStore.stage``),
        side by side; ``commit`` then only publishes them (a rename). An instance whose write fails
        is refused here, alone, and leaves nothing behind.

        Why: group_commit.py calls this in the request thread, so the file writes and their fsyncs
        overlap the writer's batch instead of adding to it (the one writer is the bottleneck).
        """
        stage = getattr(self.blobs, "stage", None)  # a store written before ``stage`` existed: put at commit
        if stage is None:
            return prepared
        todo = [(n, pr, instance_key(pr.parsed.study_uid, pr.parsed.series_uid, pr.parsed.sop_uid))
                for n, pr in enumerate(prepared) if pr.parsed is not None and pr.staged is None]
        futures = [_BLOB_POOL.submit(stage, key, pr.data) for _, pr, key in todo]
        out = list(prepared)
        for (n, pr, key), fut in zip(todo, futures, strict=True):
            try:
                out[n] = dataclasses.replace(pr, staged=fut.result())
            except Exception as e:  # noqa: BLE001 - this instance fails; the others go on
                log.warning("could not write the blob %s", key, exc_info=True)
                out[n] = Prepared(pr.data, None, _failed(
                    MedcloudError(f"could not store the instance: {type(e).__name__}"), pr.parsed))
        return out

    def commit(self, prepared: list[Prepared], *, notify: bool = True) -> list[StoreResult]:
        """Store prepared instances in one transaction (one savepoint each); one result per item, in order.

        Staged blobs (``stage``) are published, or dropped if their instance is not stored.
        ``notify=False`` leaves the ``on_change`` hooks to the caller (group_commit.py runs them once
        per batch of requests)."""
        results: list[StoreResult | None] = [pr.refused for pr in prepared]
        good = [(i, pr.parsed, pr.data) for i, pr in enumerate(prepared) if pr.parsed is not None]
        staged = {i: pr.staged for i, pr in enumerate(prepared) if pr.staged is not None}
        published: set[Staged] = set()
        try:
            if good:
                self._store_parsed(good, results, staged, published)
        finally:
            for st in staged.values():
                if st not in published:
                    self._unstage(st)
        changed = {r.study_uid for r in results if r is not None and r.stored and r.study_uid}
        if changed and notify:
            self._notify(changed)
        return [r if r is not None else StoreResult(status.PROCESSING_FAILURE, reason="not processed") for r in results]

    def _store_parsed(self, items: list[tuple[int, Parsed, bytes]], results: list[StoreResult | None],
                      staged: dict[int, Staged] | None = None, published: set[Staged] | None = None) -> None:
        """Store a batch: first optimistically in one transaction; if any instance fails on the
        way (a constraint, a blob write), roll the whole batch back and redo it with one
        SAVEPOINT per instance, so only the bad instance fails. The common case costs no
        savepoints; a failing instance costs one retry of its batch.

        Staged blobs are published by the first attempt only; the retry writes with ``put``."""
        try:
            self._write_batch(items, results, isolate=False, blobs=staged or {},
                              published=published if published is not None else set())
        except _RetryIsolated:
            self._write_batch(items, results, isolate=True)

    def _write_batch(self, items: list[tuple[int, Parsed, bytes]], results: list[StoreResult | None], *,
                     isolate: bool, blobs: dict[int, Staged] | None = None,
                     published: set[Staged] | None = None) -> None:
        blobs = blobs if blobs is not None else {}  # staged blob of an item, by index
        published = published if published is not None else set()
        created: list[str] = []
        replaced_blobs: list[str] = []
        try:
            with self.db.write() as conn:
                # PostgreSQL: serialise writers of the same patient and study rows (always in this
                # order, so two requests never wait on each other crosswise). SQLite has one writer.
                for pid in sorted({p.patient["patient_id"] for _, p, _ in items}):
                    self.db.dialect.lock_key(conn, f"dicom-patient:{pid}")
                for uid in sorted({p.study_uid for _, p, _ in items}):
                    self.db.dialect.lock_key(conn, f"dicom-study:{uid}")
                touched: set[int] = set()
                known: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}  # rows written by this request
                written: list[str] = []
                stored = _existing(conn, [p.sop_uid for _, p, _ in items])  # sop uid -> (pk, blob key, study pk)
                before = _levels(conn, [p for _, p, _ in items])  # after the locks: no one else changes them
                # New instance rows go in with one multi-row INSERT after the loop (not one statement
                # each); only where nothing later in the batch needs their pk: not in the isolated
                # retry, and not when the same SOP Instance UID comes twice.
                bulk: list[tuple[dict[str, Any], Parsed]] | None = None
                if not isolate:
                    counts: dict[str, int] = {}
                    for _, p, _ in items:
                        counts[p.sop_uid] = counts.get(p.sop_uid, 0) + 1
                    if all(n == 1 for n in counts.values()):
                        bulk = []
                # New instances' files are written in parallel up front (each put fsyncs its file:
                # serially that was most of a group-committed batch's time), or were staged by the
                # request thread and are only renamed here. Duplicates and overwrites keep the
                # in-order write below; the isolated retry writes one by one.
                prewritten = set() if isolate else self._put_new(items, stored, created, blobs, published)
                for i, p, data in items:
                    sp = conn.begin_nested() if isolate else None
                    new_key: str | None = None
                    staged: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
                    try:
                        old = stored.get(p.sop_uid)
                        if old is not None and self.config.duplicates == "reject":
                            raise Conflict(f"SOP Instance {p.sop_uid} is already stored (duplicate policy: reject)")
                        key = instance_key(p.study_uid, p.series_uid, p.sop_uid)
                        if old is None or old[1] != key:
                            new_key = key
                        if key not in prewritten:
                            self._write(key, data, blobs.get(i), published)
                        written.append(key)
                        if old is not None:
                            touched.add(old[2])
                            if old[1] != key:
                                replaced_blobs.append(old[1])
                        pk, study_pk = self._index(conn, p, key, len(data), old[0] if old is not None else None,
                                                   known=known, staged=staged, bulk=bulk, before=before)
                        touched.add(study_pk)
                        if sp is not None:
                            sp.commit()
                        known.update(staged)  # only rows of committed savepoints may be reused
                        stored[p.sop_uid] = (pk, key, study_pk)
                        if new_key and new_key not in prewritten:  # prewritten keys are in already
                            created.append(new_key)
                        warn = ((status.COERCION_OF_DATA_ELEMENTS, "replaced the stored instance with the same SOP "
                                 "Instance UID (duplicate policy: overwrite)"),) if old is not None else ()
                        results[i] = StoreResult(status.SUCCESS, p.sop_class_uid, p.sop_uid, p.study_uid, p.series_uid,
                                                 warnings=warn)
                    except Conflict as e:  # refused before anything was written for it
                        if sp is not None:
                            sp.rollback()
                        results[i] = _failed(e, p)
                    except Exception as e:  # noqa: BLE001 - one instance fails, the request goes on
                        if sp is None:
                            if new_key and new_key not in prewritten:
                                created.append(new_key)
                            raise _RetryIsolated from e
                        sp.rollback()
                        if new_key:
                            self._discard(new_key)
                        if not isinstance(e, MedcloudError):
                            log.exception("storing SOP Instance %s failed", p.sop_uid)
                            e = MedcloudError(f"could not store the instance: {type(e).__name__}")
                        results[i] = _failed(e, p)
                if bulk:
                    try:
                        _insert_instances(conn, bulk)
                    except Exception as e:  # e.g. a concurrent store of one of them: find it alone
                        raise _RetryIsolated from e
                _recount(conn, touched, self.clock())
                self.blobs.sync(written)  # directory entries durable before the index commits
        except _RetryIsolated:
            for key in created:
                self._discard(key)
            for i, _, _ in items:
                results[i] = None
            raise
        except Exception:
            log.exception("store transaction failed; removing %d new blobs", len(created))
            for key in created:
                self._discard(key)
            for i, p, _ in items:
                r = results[i]
                if r is None or r.stored:
                    results[i] = StoreResult(status.OUT_OF_RESOURCES, p.sop_class_uid, p.sop_uid, p.study_uid,
                                             p.series_uid, reason="the index write failed; retry")
            return
        for key in replaced_blobs:
            self._discard(key)

    def _put_new(self, items: list[tuple[int, Parsed, bytes]], stored: dict[str, tuple[int, str, int]],
                 created: list[str], staged: dict[int, Staged], published: set[Staged]) -> set[str]:
        """Write the blobs of instances that are new and unique in the batch, in parallel (staged
        ones are only renamed); their keys.

        Keys go to ``created`` first, so a failing batch removes them. A failed write raises
        ``_RetryIsolated`` (the batch is redone instance by instance, where that instance fails alone).
        """
        seen: dict[str, int] = {}
        for _, p, _ in items:
            seen[p.sop_uid] = seen.get(p.sop_uid, 0) + 1
        todo = [(i, instance_key(p.study_uid, p.series_uid, p.sop_uid), data) for i, p, data in items
                if seen[p.sop_uid] == 1 and p.sop_uid not in stored]
        if len(todo) < 2 and not staged:
            return set()
        created.extend(key for _, key, _ in todo)
        try:
            for i, _, _ in todo:
                st = staged.get(i)
                if st is not None:
                    self.blobs.publish(st)
                    published.add(st)
        except Exception as e:
            raise _RetryIsolated from e
        futures = [_BLOB_POOL.submit(self.blobs.put, key, data, sync_dir=False) for i, key, data in todo
                   if i not in staged]
        failed = [f for f in futures if f.exception() is not None]
        if failed:
            raise _RetryIsolated from failed[0].exception()
        return {key for _, key, _ in todo}

    def _write(self, key: str, data: bytes, staged: Staged | None, published: set[Staged]) -> None:
        if staged is None or staged in published:
            self.blobs.put(key, data, sync_dir=False)
        else:
            self.blobs.publish(staged)
            published.add(staged)

    def _unstage(self, staged: Staged) -> None:
        try:
            self.blobs.unstage(staged)
        except Exception:  # noqa: BLE001 - an unpublished temp object is invisible; it costs only space
            log.warning("could not remove the staged blob of %s", staged.key, exc_info=True)

    def _index(self, conn: Connection, p: Parsed, key: str, size: int, old_pk: int | None, *,
               known: dict[tuple[str, str], tuple[int, dict[str, Any]]] | None = None,
               staged: dict[tuple[str, str], tuple[int, dict[str, Any]]] | None = None,
               bulk: list[tuple[dict[str, Any], Parsed]] | None = None,
               before: dict[tuple[str, str], Any] | None = None) -> tuple[int, int]:
        """Write the patient/study/series rows (when new or changed) and the instance row; returns
        the instance's and its study's primary keys. With ``bulk``, a new instance's row is appended
        there for ``_insert_instances`` instead, and its pk returned as 0 (not known yet)."""
        now = self.clock()
        known = known if known is not None else {}
        staged = staged if staged is not None else {}
        patient_pk = _upsert(conn, dicom_patients, dicom_patients.c.patient_id, p.patient["patient_id"],
                             {k: v for k, v in p.patient.items() if k != "patient_id"}, known=known, staged=staged,
                             before=before)
        study_pk = _upsert(conn, dicom_studies, dicom_studies.c.study_uid, p.study_uid,
                           {**p.study, "patient_pk": patient_pk}, create={"num_series": 0, "num_instances": 0,
                                                                          "updated": now},
                           known=known, staged=staged, before=before)
        series_pk = _upsert(conn, dicom_series, dicom_series.c.series_uid, p.series_uid,
                            {**p.series, "study_pk": study_pk}, create={"num_instances": 0}, known=known,
                            staged=staged, before=before)
        row = {**p.instance, "series_pk": series_pk, "study_pk": study_pk, "blob_key": key, "size": size,
               "stored": now, "metadata": p.metadata}
        if old_pk is None and bulk is not None:
            bulk.append(({"sop_uid": p.sop_uid, **row}, p))
            return 0, study_pk
        if old_pk is None:
            inserted = conn.execute(_INSERT_INSTANCE, {"sop_uid": p.sop_uid, **row})
            pk = int(inserted.inserted_primary_key[0])  # type: ignore[index]
        else:
            pk = old_pk
            conn.execute(update(dicom_instances).where(dicom_instances.c.pk == pk).values(**row))
            if self.config.extra_tags:
                conn.execute(delete(dicom_extra_index).where(dicom_extra_index.c.instance_pk == pk))
        if p.extra:
            conn.execute(insert(dicom_extra_index), [
                {"instance_pk": pk, "series_pk": series_pk, "study_pk": study_pk, "tag": tag, "value": value}
                for tag, value in p.extra])
        return pk, study_pk

    # -- read ------------------------------------------------------------------------------

    def instances(self, study: str, series: str | None = None, sop: str | None = None) -> list[InstanceRef]:
        """The stored instances of a study / series / one instance, in series and instance order.

        Raises NotFound when nothing matches.
        """
        i, se, st = dicom_instances, dicom_series, dicom_studies
        q = (
            select(st.c.study_uid, se.c.series_uid, i.c.sop_uid, i.c.sop_class_uid, i.c.transfer_syntax_uid,
                   i.c.blob_key, i.c.size, i.c.number_of_frames)
            .select_from(i.join(se, se.c.pk == i.c.series_pk).join(st, st.c.pk == i.c.study_pk))
            .where(*_uid_filters(study, series, sop))
            .order_by(se.c.series_number, se.c.pk, i.c.instance_number, i.c.pk)
        )
        with self.db.read() as conn:
            rows = conn.execute(q).all()
        if not rows:
            raise NotFound(_what(study, series, sop) + " is not stored")
        return [InstanceRef(*r) for r in rows]

    def metadata(self, study: str, series: str | None = None, sop: str | None = None) -> list[bytes]:
        """The precomputed DICOM JSON object of each instance (PS3.18 F.2); raises NotFound."""
        i, se, st = dicom_instances, dicom_series, dicom_studies
        q = (
            select(i.c.metadata)
            .select_from(i.join(se, se.c.pk == i.c.series_pk).join(st, st.c.pk == i.c.study_pk))
            .where(*_uid_filters(study, series, sop))
            .order_by(se.c.series_number, se.c.pk, i.c.instance_number, i.c.pk)
        )
        with self.db.read() as conn:
            rows = conn.execute(q).scalars().all()
        if not rows:
            raise NotFound(_what(study, series, sop) + " is not stored")
        return list(rows)

    def study_summary(self, study: str) -> dict[str, Any] | None:
        """Patient, study, series and instance rows of one study (for the FHIR ImagingStudy)."""
        return self.study_summaries([study]).get(study)

    def study_summaries(self, studies: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``study_summary`` of several studies in one read (three queries, not three per study):
        a group-committed batch changes a few dozen studies at once. Studies not stored are absent."""
        uids = sorted(set(studies))
        out: dict[str, dict[str, Any]] = {}
        with self.db.read() as conn:
            for start in range(0, len(uids), 500):
                out.update(_summaries(conn, uids[start:start + 500]))
        return out

    def set_patient_link(self, patient_id: str, fhir_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(update(dicom_patients).where(dicom_patients.c.patient_id == patient_id)
                         .values(fhir_id=fhir_id))

    def set_study_link(self, study: str, fhir_id: str | None) -> None:
        with self.db.write() as conn:
            conn.execute(update(dicom_studies).where(dicom_studies.c.study_uid == study).values(fhir_id=fhir_id))

    def link_studies(self, studies: list[str]) -> None:
        """Record that each study's ImagingStudy id is its StudyInstanceUID (one transaction)."""
        st = dicom_studies
        with self.db.write() as conn:
            for start in range(0, len(studies), 500):
                conn.execute(update(st).where(st.c.study_uid.in_(studies[start:start + 500]))
                             .values(fhir_id=st.c.study_uid))

    def check_blobs(self, *, repair: bool = False, min_age: float = 3600.0, batch: int = 1000) -> BlobCheck:
        """Compare the blob store with the index (``medcloud dicom fsck``).

        An *orphan* is an object no index row points to: a process killed after publishing a batch's
        files and before its index commit, or a blob delete that failed after the rows were gone.
        Nothing serves orphans; ``repair`` deletes them once they are ``min_age`` seconds old (a
        younger one may belong to a batch about to commit), and sweeps staged temp files as old.
        A *missing* object (a row whose file is gone) cannot be repaired here: it is reported.
        """
        i = dicom_instances
        orphans: list[str] = []
        seen = 0
        pending: list[str] = []

        def flush() -> None:
            if not pending:
                return
            with self.db.read() as conn:
                known = {r[0] for r in conn.execute(select(i.c.blob_key).where(i.c.blob_key.in_(pending)))}
            orphans.extend(k for k in pending if k not in known)
            pending.clear()

        for key in self.blobs.keys(prefix=""):
            seen += 1
            pending.append(key)
            if len(pending) >= batch:
                flush()
        flush()
        missing: list[str] = []
        after = -1
        while True:
            with self.db.read() as conn:
                rows = conn.execute(select(i.c.pk, i.c.blob_key).where(i.c.pk > after).order_by(i.c.pk)
                                    .limit(batch)).all()
            if not rows:
                break
            after = rows[-1].pk
            missing.extend(r.blob_key for r in rows if not self.blobs.exists(r.blob_key))
        removed = swept = 0
        if repair:
            cutoff = time.time() - min_age
            for key in orphans:
                if self.blobs.modified(key) < cutoff:
                    self.blobs.delete(key)
                    removed += 1
            swept = self.blobs.sweep_staged(older_than=min_age)
        return BlobCheck(objects=seen, orphans=tuple(orphans), missing=tuple(missing), removed=removed,
                         swept=swept)

    def reindex_extra(self, batch: int = 500) -> int:
        """Rebuild ``dicom_extra_index`` for every stored instance from its DICOM JSON (after
        ``dicom_extra_tags`` changed); one short transaction per batch, so stores go on meanwhile.
        Returns the number of instances indexed."""
        from medcloud.imaging.extra_tags import from_json

        i, x = dicom_instances, dicom_extra_index
        done, after = 0, -1
        while True:
            with self.db.write() as conn:
                rows = conn.execute(select(i.c.pk, i.c.series_pk, i.c.study_pk, i.c.metadata)
                                    .where(i.c.pk > after).order_by(i.c.pk).limit(batch)).all()
                if not rows:
                    if after < 0:  # nothing stored: still drop rows of tags no longer configured
                        conn.execute(delete(x))
                    return done
                pks = [r.pk for r in rows]
                conn.execute(delete(x).where(x.c.instance_pk.in_(pks)))
                values = [{"instance_pk": r.pk, "series_pk": r.series_pk, "study_pk": r.study_pk, "tag": tag,
                           "value": value}
                          for r in rows for tag, value in from_json(orjson.loads(r.metadata), self.config.extra_tags)]
                if values:
                    conn.execute(insert(x), values)
            done += len(rows)
            after = pks[-1]

    # -- delete ----------------------------------------------------------------------------

    def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int:
        """Delete a study, a series or one instance; returns the number of instances removed.

        Raises NotFound when nothing matches.
        """
        for uid in (study, series, sop):
            if uid is not None and not valid_uid(uid):
                raise Invalid(f"not a valid UID: {uid!r}")
        with self.db.write() as conn:
            self.db.dialect.lock_key(conn, f"dicom-study:{study}")
            i, se, st = dicom_instances, dicom_series, dicom_studies
            rows = conn.execute(
                select(i.c.pk, i.c.blob_key, i.c.study_pk)
                .select_from(i.join(se, se.c.pk == i.c.series_pk).join(st, st.c.pk == i.c.study_pk))
                .where(*_uid_filters(study, series, sop))
            ).all()
            if not rows:
                raise NotFound(_what(study, series, sop) + " is not stored")
            pks = [r.pk for r in rows]
            for chunk in range(0, len(pks), 500):
                conn.execute(delete(dicom_extra_index).where(dicom_extra_index.c.instance_pk.in_(pks[chunk:chunk + 500])))
                conn.execute(delete(i).where(i.c.pk.in_(pks[chunk:chunk + 500])))
            _recount(conn, {r.study_pk for r in rows}, self.clock())
        for r in rows:
            self._discard(r.blob_key)
        self._notify({study})
        return len(rows)

    def _discard(self, key: str) -> None:
        """Delete a blob no index row points to; a failure (object store down) leaves an orphan, logged."""
        try:
            self.blobs.delete(key)
        except Exception:  # noqa: BLE001 - the index is already right; an orphan costs only space
            log.warning("could not delete blob %s (left as an orphan)", key, exc_info=True)

    # -- study stable ----------------------------------------------------------------------

    def mark_stable(self) -> list[str]:
        """Mark studies with no store for ``stable_after_seconds`` as stable; fire ``on_stable``.

        Call it periodically (the app's job worker idle hook). Any later store or delete clears the
        mark, and the study fires again when quiet again.

        Delivery is at least once: the hooks run *before* the mark is written, so a process killed
        in between leaves the study unmarked and it fires again on the next call (here or on another
        replica); subscribers must be idempotent (the AI reads enqueue jobs with deterministic ids).
        The other order lost that study's event for good. Two replicas may both fire a study once.
        """
        now = self.clock()
        cutoff = now - int(self.config.stable_after_seconds * 1_000_000)
        st = dicom_studies
        due = select(st.c.pk, st.c.study_uid).where(st.c.stable_at.is_(None), st.c.updated <= cutoff)
        with self.db.read() as conn:  # the common case, nothing due, takes no write lock
            rows = conn.execute(due.order_by(st.c.updated).limit(1000)).all()
        if not rows:
            return []
        uids = [r.study_uid for r in rows]
        for hook in self.on_stable:
            try:
                hook(uids)
            except Exception:  # noqa: BLE001 - a subscriber's failure must not stop the others
                log.exception("study-stable hook failed for %d studies", len(uids))
        with self.db.write() as conn:
            # a study stored to meanwhile is not marked: it fires again once quiet
            conn.execute(update(st).where(st.c.pk.in_([r.pk for r in rows]), st.c.stable_at.is_(None),
                                          st.c.updated <= cutoff).values(stable_at=now))
        return uids

    def _notify(self, studies: set[str]) -> None:
        for hook in self.on_change:
            try:
                hook(studies)
            except Exception:  # noqa: BLE001 - the images are stored; the link is repaired on the next change
                log.exception("imaging change hook failed for studies %s", sorted(studies))


@dataclass(frozen=True, slots=True)
class BlobCheck:
    """What ``Archive.check_blobs`` found: objects walked, orphans (no row), missing (row, no object)."""

    objects: int
    orphans: tuple[str, ...]
    missing: tuple[str, ...]
    removed: int  # orphans deleted (repair)
    swept: int  # staged temp files removed (repair)


class _RetryIsolated(Exception):
    """An instance failed in an optimistic batch: redo the batch with a savepoint per instance."""


_INSERT_INSTANCE = insert(dicom_instances)
_INSERT_INSTANCES = insert(dicom_instances).returning(dicom_instances.c.pk, sort_by_parameter_order=True)
# Blob writes of one batch run side by side (fsync and object-store round trips release the GIL).
_BLOB_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="imaging-blob")


def _failed(err: MedcloudError, p: Parsed | None) -> StoreResult:
    return StoreResult(
        status.store_status(err),
        p.sop_class_uid if p else None,
        p.sop_uid if p else None,
        p.study_uid if p else None,
        p.series_uid if p else None,
        reason=err.message,
    )


def _upsert(conn: Connection, table: Any, key_col: Any, key: str, values: dict[str, Any],
            create: dict[str, Any] | None = None, *, known: dict[tuple[str, str], tuple[int, dict[str, Any]]],
            staged: dict[tuple[str, str], tuple[int, dict[str, Any]]],
            before: dict[tuple[str, str], Any] | None = None) -> int:
    """Insert or update one level's row by its natural key; NULL values never erase stored ones.

    ``known`` holds rows this request already wrote (pk and the values applied), so the 2nd..nth
    instance of a series costs no SELECT and, unless an attribute differs, no UPDATE. ``before``
    (``_levels``) holds the rows as they were when the transaction began (None: absent), so the
    first instance costs no SELECT either.
    """
    present = {k: v for k, v in values.items() if v is not None}
    cached = staged.get((table.name, key)) or known.get((table.name, key))
    if cached is not None:
        pk, applied = cached
        changed = {k: v for k, v in present.items() if applied.get(k) != v}
        if changed:
            conn.execute(update(table).where(table.c.pk == pk).values(changed))
            staged[(table.name, key)] = (pk, {**applied, **changed})
        return pk
    if before is not None and (table.name, key) in before:
        found = before[(table.name, key)]
    else:
        found = conn.execute(select(table).where(key_col == key)).mappings().first()
    if found is None:
        inserted = conn.execute(insert(table).values({key_col.name: key, **(create or {}), **present}))
        pk = int(inserted.inserted_primary_key[0])  # type: ignore[index]
    else:
        pk = int(found["pk"])
        # Only what differs (the study's ``updated`` is set by ``_recount`` after every store).
        changed = {k: v for k, v in present.items() if found[k] != v}
        if changed:
            conn.execute(update(table).where(table.c.pk == pk).values(changed))
    staged[(table.name, key)] = (pk, present)
    return pk


def _insert_instances(conn: Connection, rows: list[tuple[dict[str, Any], Parsed]]) -> None:
    """One multi-row INSERT of new instance rows (SQLAlchemy "insertmanyvalues"), then their extra
    matching keys with the pks it returned, in order."""
    result = conn.execute(_INSERT_INSTANCES, [row for row, _ in rows])
    pks = [int(pk) for pk in result.scalars().all()]
    extra = [{"instance_pk": pk, "series_pk": row["series_pk"], "study_pk": row["study_pk"], "tag": tag,
              "value": value}
             for pk, (row, p) in zip(pks, rows, strict=True) for tag, value in p.extra]
    if extra:
        conn.execute(insert(dicom_extra_index), extra)


def _recount(conn: Connection, study_pks: set[int], now: int) -> None:
    """Recompute series/study counts and ModalitiesInStudy; drop series and studies left empty.

    Only series whose count changed are written (a batch usually adds to one series of a study).
    """
    i, se, st = dicom_instances, dicom_series, dicom_studies
    for study_pk in study_pks:
        counts: dict[int, int] = dict(conn.execute(
            select(i.c.series_pk, func.count()).where(i.c.study_pk == study_pk).group_by(i.c.series_pk)
        ).all())
        series = conn.execute(
            select(se.c.pk, se.c.modality, se.c.num_instances).where(se.c.study_pk == study_pk)).all()
        modalities = set()
        for s in series:
            n = counts.get(s.pk, 0)
            if n == 0:
                conn.execute(delete(se).where(se.c.pk == s.pk))
                continue
            if n != s.num_instances:
                conn.execute(update(se).where(se.c.pk == s.pk).values(num_instances=n))
            if s.modality:
                modalities.add(s.modality)
        total = sum(counts.values())
        if total == 0:
            conn.execute(delete(st).where(st.c.pk == study_pk))
            continue
        conn.execute(update(st).where(st.c.pk == study_pk).values(
            num_series=len(counts), num_instances=total, modalities="\\".join(sorted(modalities)) or None,
            updated=now, stable_at=None))


def _levels(conn: Connection, parsed: list[Parsed]) -> dict[tuple[str, str], Any]:
    """The stored patient, study and series rows a batch touches, by (table, natural key); keys not
    stored map to None. Three queries per batch instead of one per new patient, study and series."""
    out: dict[tuple[str, str], Any] = {}
    for table, col, keys in ((dicom_patients, dicom_patients.c.patient_id, {p.patient["patient_id"] for p in parsed}),
                             (dicom_studies, dicom_studies.c.study_uid, {p.study_uid for p in parsed}),
                             (dicom_series, dicom_series.c.series_uid, {p.series_uid for p in parsed})):
        unique = sorted(keys)
        out.update({(table.name, k): None for k in unique})
        for start in range(0, len(unique), 500):
            for row in conn.execute(select(table).where(col.in_(unique[start:start + 500]))).mappings():
                out[(table.name, row[col.name])] = row
    return out


def _existing(conn: Connection, sop_uids: list[str]) -> dict[str, tuple[int, str, int]]:
    """Stored instances among ``sop_uids``: SOP Instance UID -> (pk, blob key, study pk)."""
    i = dicom_instances
    found: dict[str, tuple[int, str, int]] = {}
    unique = sorted(set(sop_uids))
    for start in range(0, len(unique), 500):
        rows = conn.execute(select(i.c.sop_uid, i.c.pk, i.c.blob_key, i.c.study_pk)
                            .where(i.c.sop_uid.in_(unique[start:start + 500]))).all()
        found.update({r.sop_uid: (r.pk, r.blob_key, r.study_pk) for r in rows})
    return found


def _summaries(conn: Connection, uids: list[str]) -> dict[str, dict[str, Any]]:
    st_rows = conn.execute(
        select(dicom_studies, dicom_patients.c.patient_id, dicom_patients.c.patient_name,
               dicom_patients.c.patient_birth_date, dicom_patients.c.patient_sex,
               dicom_patients.c.fhir_id.label("patient_fhir_id"))
        .join(dicom_patients, dicom_patients.c.pk == dicom_studies.c.patient_pk)
        .where(dicom_studies.c.study_uid.in_(uids))
    ).mappings().all()
    if not st_rows:
        return {}
    study_pks = [r["pk"] for r in st_rows]
    series_of: dict[int, list[dict[str, Any]]] = {}
    for s in conn.execute(select(dicom_series).where(dicom_series.c.study_pk.in_(study_pks))
                          .order_by(dicom_series.c.series_number, dicom_series.c.pk)).mappings():
        series_of.setdefault(s["study_pk"], []).append({**s, "instances": []})
    by_series = {s["pk"]: s["instances"] for ss in series_of.values() for s in ss}
    i = dicom_instances
    for r in conn.execute(select(i.c.series_pk, i.c.sop_uid, i.c.sop_class_uid, i.c.instance_number,
                                 i.c.number_of_frames)
                          .where(i.c.study_pk.in_(study_pks)).order_by(i.c.instance_number, i.c.pk)).mappings():
        target = by_series.get(r["series_pk"])
        if target is not None:
            target.append(dict(r))
    return {r["study_uid"]: {**r, "series": series_of.get(r["pk"], [])} for r in st_rows}


def _uid_filters(study: str, series: str | None, sop: str | None) -> list[Any]:
    f = [dicom_studies.c.study_uid == study]
    if series is not None:
        f.append(dicom_series.c.series_uid == series)
    if sop is not None:
        f.append(dicom_instances.c.sop_uid == sop)
    return [and_(*f)]


def _what(study: str, series: str | None, sop: str | None) -> str:
    if sop is not None:
        return f"instance {sop} of series {series} in study {study}"
    if series is not None:
        return f"series {series} of study {study}"
    return f"study {study}"
