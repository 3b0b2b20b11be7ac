"""Concurrent STOW-RS requests share group-committed transactions (imaging/group_commit.py): every
instance is stored, counts are right, and each study's ImagingStudy is current when its response arrives."""

from __future__ import annotations

import threading

import pytest
from _factory import instance
from _http import stow, value
from pydicom.uid import generate_uid

from medcloud.imaging.group_commit import GroupCommit

THREADS, REQUESTS, PER_REQUEST = 6, 4, 3


def test_concurrent_stow_into_shared_and_separate_studies(dw, archive) -> None:
    shared = generate_uid()
    shared_series = [generate_uid(), generate_uid()]
    errors: list[str] = []
    seen_instances: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def client(t: int) -> None:
        own, own_series = generate_uid(), generate_uid()
        start.wait()
        for n in range(REQUESTS):
            datas = [instance(study=shared, series=shared_series[(t + k) % 2], patient_id="SHARED",
                              instance_number=100 * t + 10 * n + k) for k in range(PER_REQUEST)]
            datas += [instance(study=own, series=own_series, patient_id=f"OWN-{t}", instance_number=10 * n + k)
                      for k in range(PER_REQUEST)]
            r = stow(dw, datas)
            if r.status_code != 200:
                errors.append(f"{r.status_code}: {r.text}")
                continue
            refs = r.json()["00081199"]["Value"]
            if len(refs) != 2 * PER_REQUEST:
                errors.append(f"{len(refs)} referenced instead of {2 * PER_REQUEST}")
            # The ImagingStudy must already reflect this request when the response is read.
            for study, minimum in ((own, (n + 1) * PER_REQUEST), (shared, None)):
                res = dw.get(f"/fhir/ImagingStudy/{study}")
                if res.status_code != 200:
                    errors.append(f"ImagingStudy/{study}: {res.status_code}")
                    continue
                got = res.json()["numberOfInstances"]
                if minimum is not None and got != minimum:
                    errors.append(f"ImagingStudy/{study} has {got} instances right after request {n}, want {minimum}")
                with lock:
                    seen_instances[study] = max(seen_instances.get(study, 0), got)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:5]

    total_shared = THREADS * REQUESTS * PER_REQUEST
    studies = {value(s, "0020000D"): s for s in dw.get("/dicomweb/studies").json()}
    assert len(studies) == THREADS + 1
    assert value(studies[shared], "00201208") == total_shared
    assert value(studies[shared], "00201206") == 2
    series = dw.get(f"/dicomweb/studies/{shared}/series").json()
    assert sorted(value(s, "00201209") for s in series) == [total_shared // 2] * 2
    for uid, s in studies.items():
        if uid != shared:
            assert value(s, "00201208") == REQUESTS * PER_REQUEST
    assert len(dw.get("/dicomweb/instances", params={"limit": "1000"}).json()) == 2 * total_shared
    final = dw.get(f"/fhir/ImagingStudy/{shared}").json()
    assert final["numberOfInstances"] == total_shared
    assert sum(s["numberOfInstances"] for s in final["series"]) == total_shared
    # One Patient per PatientID despite concurrent first stores.
    bundle = dw.get("/fhir/Patient", params={"identifier": "urn:medcloud:dicom:patient-id|SHARED"}).json()
    assert bundle.get("total", len(bundle.get("entry", []))) == 1


def test_group_commit_batches_queued_requests_and_keeps_results_in_order(archive) -> None:
    """While the writer is busy, queued requests are committed together; each gets its own results."""
    calls: list[set[str]] = []
    gate = threading.Event()
    entered = threading.Event()

    def slow_hook(studies: set[str]) -> None:
        calls.append(set(studies))
        entered.set()
        gate.wait(10)

    writer = GroupCommit(archive, after_commit=slow_hook)
    st = [generate_uid() for _ in range(4)]
    out: dict[int, list[int]] = {}

    def send(i: int, datas: list[bytes]) -> None:
        out[i] = [r.status for r in writer.store_many(datas)]

    first = threading.Thread(target=send, args=(0, [instance(study=st[0])]))
    first.start()
    assert entered.wait(10)  # the writer now sits in the hook of batch 1
    dup = generate_uid()
    # 1 and 3 share a SOP Instance UID (one must fail 0x0111 at commit); 2 has an instance refused at parse.
    rest = [threading.Thread(target=send, args=(i, [instance(study=st[i], sop=dup if i == 3 else None),
                                                    instance(study=st[i], sop=dup if i == 1 else None,
                                                             drop=("SOPClassUID",) if i == 2 else ())]))
            for i in (1, 2, 3)]
    for t in rest:
        t.start()
    while writer._queue.qsize() < 3:  # noqa: SLF001 - wait until all three are queued
        threading.Event().wait(0.01)
    gate.set()
    for t in [first, *rest]:
        t.join(30)
    assert writer.batches == 2
    assert calls[0] == {st[0]} and calls[1] == {st[1], st[2], st[3]}
    assert out[0] == [0]
    assert out[2] == [0, 0xA900]  # the bad instance fails alone, in its own slot
    assert sorted([out[1][1], out[3][0]]) == [0, 0x0111] and out[1][0] == out[3][1] == 0


@pytest.mark.parametrize("bad", [b"not dicom"])
def test_group_commit_refused_only_requests_never_reach_the_writer(archive, bad) -> None:
    writer = GroupCommit.for_archive(archive)
    results = writer.store_many([bad])
    assert results[0].status == 0xC000
    assert writer.batches == 0
