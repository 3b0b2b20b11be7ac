"""DICOM instance files in S3-compatible object storage (AWS S3, MinIO, Ceph RGW): ``S3BlobStore``.

The same UID-addressed keys as ``LocalBlobStore`` under an optional prefix, so several stateless
medcloud replicas can share one bucket. Each method is one S3 call or a paginated series of them:

* ``put`` is one PutObject: S3 makes an object visible whole or not at all, so it is atomic
  without a temporary name, and durable when it returns (``sync`` has nothing left to do).
* ``open``/``iter_chunks`` stream the GetObject body; a WADO-RS retrieve of a 2 GB instance never
  holds it in memory. The GetObject is sent when ``open``/``iter_chunks`` is *called*, not when
  the first chunk is pulled, so a retrieve fails (503) before its 200 is sent.
* ``delete_prefix`` (a study or series) is ListObjectsV2 pages + DeleteObjects of 1000 keys each,
  the API's maximum (https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html).

One boto3 client per store, shared by every thread (clients are thread-safe; sessions are not).
Timeouts are short and retries use botocore's "standard" mode (exponential backoff with jitter on
throttling, 5xx and connection errors), so a blip is retried and an outage fails in seconds.
Whatever still fails becomes ``StorageUnavailable`` (``errors.Busy``): DICOMweb answers 503 and a
STOW/C-STORE instance gets Out of Resources (0xA700), never a 500. A missing key is
``FileNotFoundError``, as for local files.

Credentials are boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, web identity, instance/container role): medcloud keeps no S3 secret of its own.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, cast

from medcloud.errors import Busy
from medcloud.imaging.blobs import CHUNK, Staged

DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
_SPOOL = 16 * 1024 * 1024  # a header rewrite keeps objects up to this size in memory, larger on disk
_MISSING = {"NoSuchKey", "404", "NotFound"}


class StorageUnavailable(Busy):
    """The object store could not be reached or refused the request (transient for the client: 503)."""


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix")."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    return bucket, prefix.strip("/")


def make_client(*, endpoint_url: str | None = None, region: str | None = None, connect_timeout: float = 5.0,
                read_timeout: float = 30.0, max_attempts: int = 4, max_pool_connections: int = 32) -> Any:
    """A boto3 S3 client with bounded timeouts and standard retries; credentials from boto3's chain."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,  # the server's thread pool shares one client
        s3={"addressing_style": "path"} if endpoint_url else None,  # MinIO/Ceph: no bucket DNS names
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url or None,
                          region_name=region or session.region_name or "us-east-1", config=config)


class S3BlobStore:
    """Objects ``<prefix>/<key>`` in ``bucket``; see the module docstring."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any | None = None,
                 endpoint_url: str | None = None, region: str | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else make_client(endpoint_url=endpoint_url, region=region)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> S3BlobStore:
        bucket, prefix = parse_url(url)
        return cls(bucket, prefix, **kwargs)

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix})"

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- BlobStore ---------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, sync_dir: bool = True) -> None:
        with self._errors("store", key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def sync(self, keys: list[str]) -> None:
        return None  # a PutObject that returned is durable

    def stage(self, key: str, data: bytes) -> Staged | None:
        return None  # no cheaper step than the PutObject itself (a temp object would cost a copy)

    def publish(self, staged: Staged) -> None:
        raise NotImplementedError("S3BlobStore never stages")

    def unstage(self, staged: Staged) -> None:
        return None

    def sweep_staged(self, older_than: float) -> int:
        return 0  # nothing is ever staged (an interrupted PutObject stores nothing)

    def modified(self, key: str) -> float:
        with self._errors("read", key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return float(head["LastModified"].timestamp())

    def open(self, key: str) -> BinaryIO:
        with self._errors("read", key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        return cast(BinaryIO, io.BufferedReader(_Body(body, self, key), CHUNK))

    def read(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def iter_chunks(self, key: str, size: int = CHUNK) -> Iterator[bytes]:
        f = self.open(key)  # now, not at the first next(): see the module docstring

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(size):
                    yield chunk

        return chunks()

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))  # absent: 204 as well

    def delete_prefix(self, prefix: str) -> None:
        batch: list[dict[str, str]] = []
        for full in self._list(prefix.strip("/") + "/"):
            batch.append({"Key": full})
            if len(batch) == DELETE_BATCH:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def exists(self, key: str) -> bool:
        try:
            with self._errors("check", key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            return False
        return True

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key (relative to the store's prefix) starting with ``prefix``, in S3's (UTF-8) order."""
        cut = len(self.prefix) + 1 if self.prefix else 0
        for full in self._list(prefix):
            yield full[cut:]

    # -- key rotation (security/rotation.py) -------------------------------------------------

    def read_head(self, key: str, size: int) -> bytes:
        """The first ``size`` bytes (one ranged GET)."""
        with self._errors("read", key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes=0-{size - 1}")["Body"]
            with body:
                return cast(bytes, body.read())

    def rewrite_head(self, key: str, size: int, change: Callable[[bytes], bytes | None]) -> bool:
        """Replace the first ``size`` bytes with ``change(head)`` (None: leave the object); True if rewritten.

        S3 cannot write in place, so the object is copied through a spooled temporary file with the
        new head and put back with ``If-Match`` on the ETag read: an object replaced meanwhile (a
        STOW of the same SOP Instance) is left alone rather than overwritten with the old content.
        """
        full = self._key(key)
        with self._errors("rewrite", key):
            got = self.client.get_object(Bucket=self.bucket, Key=full)
            etag, body = got["ETag"], got["Body"]
            with body, tempfile.SpooledTemporaryFile(max_size=_SPOOL) as tmp:
                head = body.read(size)
                new = change(head)
                if new is None:
                    return False
                if len(new) != len(head):
                    raise ValueError("rewrite_head must keep the head's length")
                tmp.write(new)
                shutil.copyfileobj(cast(BinaryIO, body), tmp, CHUNK)
                tmp.seek(0)
                try:
                    self.client.put_object(Bucket=self.bucket, Key=full, Body=tmp, IfMatch=etag)
                except Exception as e:  # noqa: BLE001 - only a failed precondition is expected here
                    if _code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                        return False  # replaced meanwhile, by a writer that uses the current KEK
                    raise
        return True

    # -- startup check -----------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``StorageUnavailable`` unless the bucket exists and these credentials may list it."""
        with self._errors("check", None):
            self.client.head_bucket(Bucket=self.bucket)
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._prefix_dir(), MaxKeys=1)

    # -- internals ---------------------------------------------------------------------------

    def _prefix_dir(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _list(self, prefix: str) -> Iterator[str]:
        full = self._prefix_dir() + prefix
        with self._errors("list", prefix or None):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield obj["Key"]

    def _delete_batch(self, batch: list[dict[str, str]]) -> None:
        with self._errors("delete", None):
            out = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        errors = out.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageUnavailable(f"object storage refused to delete {len(errors)} object(s), e.g. "
                                     f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".strip())

    @contextmanager
    def _errors(self, action: str, key: str | None) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except ClientError as e:
            code = _code(e)
            if key is not None and code in _MISSING:
                raise FileNotFoundError(f"no object {self._key(key)!r} in bucket {self.bucket!r}") from e
            raise StorageUnavailable(_explain(action, self.bucket, code, e)) from e
        except NoCredentialsError as e:
            raise StorageUnavailable(f"no credentials for bucket {self.bucket!r}: set AWS_ACCESS_KEY_ID and "
                                     "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the host a role") from e
        except BotoCoreError as e:
            raise StorageUnavailable(f"object storage unreachable ({action}, bucket {self.bucket!r}): {e}") from e


class _Body(io.RawIOBase):
    """A GetObject body as a raw stream (so ``BufferedReader`` gives it ``read``/``readinto``/``with``)."""

    def __init__(self, body: Any, store: S3BlobStore, key: str):
        self._body = body
        self._store = store
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        from urllib3.exceptions import HTTPError

        try:
            with self._store._errors("read", self._key):
                data = self._body.read(len(view))
        except HTTPError as e:  # a connection cut mid-body (urllib3 below botocore)
            raise StorageUnavailable(f"object storage connection lost while reading {self._key}: {e}") from e
        view[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _code(e: Exception) -> str:
    response = getattr(e, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _explain(action: str, bucket: str, code: str, e: Exception) -> str:
    if code in ("NoSuchBucket",) or (action == "check" and code in ("404", "NotFound")):
        return f"bucket {bucket!r} does not exist (create it, or fix blob_store)"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden",
                "ExpiredToken", "InvalidToken"):
        return (f"object storage refused the credentials for bucket {bucket!r} ({code}); check the AWS "
                "credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, role)")
    return f"object storage error ({action}, bucket {bucket!r}): {code or type(e).__name__}: {e}"
