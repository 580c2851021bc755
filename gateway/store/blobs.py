"""Content-addressed blobs: a local folder (the default) or an S3-compatible bucket.

A blob is named by the SHA-256 of its bytes.  One small interface, two homes:

* :class:`LocalBlobs` — ``blobs/ab/cd/<sha256>`` under the store folder: a temp
  file in ``tmp/`` (same file system), fsync, rename, fsync the directory
  (STYLE.md, Store).  A node's default, and exactly the layout of every store
  written before ``store.blob_url`` existed.
* :class:`S3Blobs` — ``s3://bucket/prefix`` on AWS S3, MinIO, Ceph RGW, SeaweedFS,
  Alibaba OSS, Tencent COS or Huawei OBS (``store.blob_url``), under the same key
  layout (``<prefix>blobs/ab/cd/<sha256>``).  A write is confirmed only when the
  object store answered the PUT (or the multipart completion) with success
  *after checking* the Content-MD5 we sent (and the ``x-amz-checksum-sha256``,
  which is the blob's own name), and its ETag is the MD5 we computed.

Either way the caller (``Store``) inserts the index row only after :meth:`put`
returned: the row is the commit point, so an acknowledged instance always has
its bytes; bytes without a row are orphans that :meth:`Store.recover` removes.

Reads stream: :meth:`Blobs.chunks` yields a byte range in bounded pieces (one
ranged GET per ``range_bytes`` on S3) and :meth:`Blobs.open` gives a seekable
file object for pydicom (on S3 one ranged GET per miss, with a read-ahead
window that grows while reads are sequential and stays small while they seek),
so memory never grows with the instance, nor with the study.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from fenji.gateway.config import (
    BLOB_S3_MULTIPART_THRESHOLD_BYTES,
    BLOB_S3_ORPHAN_GRACE_S,
    BLOB_S3_PART_BYTES,
    BLOB_S3_RANGE_BYTES,
    BLOB_S3_READAHEAD_MAX_BYTES,
    BLOB_S3_READAHEAD_MIN_BYTES,
)
from fenji.gateway.errors import ConfigError, LocalError
from fenji.gateway.settings.blob_url import S3Url, parse_blob_url

log = logging.getLogger(__name__)


class StoreFull(LocalError):
    """No room to store durably; maps to DICOM 0xA700 Out of Resources."""

    http_status = 507
    dicom_status = 0xA700  # Out of Resources


class BlobStoreError(LocalError):
    """The object store did not confirm a write, or a read failed: the sender retries."""

    http_status = 503
    dicom_status = 0xA700  # Out of Resources: the modality retries later (PS3.4 B.2.3)


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One stored blob as a listing shows it."""

    name: str  # the SHA-256 (hex)
    size: int
    modified_at: float  # POSIX seconds


class Blobs(Protocol):
    """What the store needs of a blob home.  Names are SHA-256 hex strings."""

    # Where the blobs live, for messages (a folder or an s3:// URL).
    where: str
    # A blob without an index row younger than this is not an orphan yet: another
    # process may be between its write and its commit (0: the local, one-process case).
    orphan_grace_s: float

    def put(self, data: bytes | memoryview, sha256: str) -> None:
        """Write ``data`` durably under ``sha256``; returns only once it is confirmed."""
        ...

    def put_file(self, path: Path, sha256: str) -> None:
        """Take the file at ``path`` (moved or uploaded, then removed) as blob ``sha256``."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def read(self, sha256: str) -> bytes: ...

    def chunks(self, sha256: str, offset: int, length: int, chunk_bytes: int
               ) -> Iterator[bytes]:
        """``length`` bytes from ``offset`` in pieces of at most ``chunk_bytes``."""
        ...

    def open(self, sha256: str) -> BinaryIO:
        """A seekable binary file object (close it)."""
        ...

    def local_path(self, sha256: str) -> Path | None:
        """The blob's file, when it is one (zero-copy sends); ``None`` on S3."""
        ...

    def delete(self, sha256: str) -> None: ...

    def listing(self) -> Iterator[BlobInfo]: ...

    def check_room(self, size: int) -> None: ...

    def close(self) -> None: ...


# -- the local folder -----------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_enospc(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class LocalBlobs:
    """Blobs as files: ``<folder>/ab/cd/<sha256>`` (``fanout``) or ``<folder>/<sha256>``."""

    orphan_grace_s = 0.0

    def __init__(self, folder: Path, tmp_dir: Path, *, store_root: Path,
                 min_free_bytes: int = 0, fanout: bool = True) -> None:
        self.folder = Path(folder)
        self.tmp_dir = Path(tmp_dir)
        self.store_root = Path(store_root)
        self.min_free_bytes = min_free_bytes
        self.fanout = fanout
        self.where = str(self.folder)
        for d in (self.folder, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if self.fanout:
            return self.folder / sha256[:2] / sha256[2:4] / sha256
        return self.folder / sha256

    def local_path(self, sha256: str) -> Path | None:
        return self.path(sha256)

    def check_room(self, size: int) -> None:
        free = shutil.disk_usage(self.store_root).free
        if free < self.min_free_bytes + size:
            raise StoreFull(f"store {self.store_root}: {free} bytes free, need {size} + "
                            f"{self.min_free_bytes} reserved (store.min_free_bytes)")

    def put(self, data: bytes | memoryview, sha256: str) -> None:
        """temp file, fsync, rename, fsync directory (STYLE.md, Store)."""
        final = self.path(sha256)
        if final.exists():  # content-addressed: the same name is the same bytes
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir / f"{final.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # patient data
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if _is_enospc(exc):
                raise StoreFull(f"store {self.store_root}: disk full writing "
                                f"{final.name[:12]}…") from exc
            raise

    def put_file(self, path: Path, sha256: str) -> None:
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
        _fsync_dir(final.parent)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def chunks(self, sha256: str, offset: int, length: int, chunk_bytes: int
               ) -> Iterator[bytes]:
        with open(self.path(sha256), "rb") as fh:
            fh.seek(offset)
            left = length
            while left > 0:
                piece = fh.read(min(chunk_bytes, left))
                if not piece:
                    raise BlobStoreError(f"blob {sha256[:12]}… in {self.where} ends "
                                         f"{left} bytes short of offset {offset} + {length}")
                left -= len(piece)
                yield piece

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    def listing(self) -> Iterator[BlobInfo]:
        for p in (self.folder.glob("*/*/*") if self.fanout else self.folder.iterdir()):
            with contextlib.suppress(OSError):
                st = p.stat()
                if p.is_file():
                    yield BlobInfo(p.name, st.st_size, st.st_mtime)

    def close(self) -> None:
        pass


# -- S3-compatible object storage ------------------------------------------------
def s3_client(url: S3Url, *, access_key_id: str = "", secret_access_key: str = "") -> Any:
    """A boto3 S3 client for ``url``: credentials from the arguments (config) or else
    boto3's standard chain (AWS_ACCESS_KEY_ID…, ~/.aws, an instance role)."""
    try:
        import boto3
        from botocore.config import Config as BotoConfig
    except ImportError as exc:  # the township default needs no boto3
        raise ConfigError([f"store.blob_url = s3://{url.bucket}/…: needs boto3; install "
                           "fenji with its 'center' extra (pip install 'fenji[center]')"]
                          ) from exc
    kwargs: dict[str, Any] = {}
    if access_key_id or secret_access_key:
        kwargs.update(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key)
    cfg = BotoConfig(
        s3={"addressing_style": url.addressing},
        # We send the checksums ourselves (below); botocore's default CRC32
        # trailers are refused by several S3-compatible servers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10, read_timeout=60,
        max_pool_connections=32)  # one per DIMSE worker / WADO stream thread
    return boto3.client("s3", endpoint_url=url.endpoint, region_name=url.region or "us-east-1",
                        config=cfg, **kwargs)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _etag(resp: dict[str, Any]) -> str:
    return str(resp.get("ETag", "")).strip('"').lower()


class S3Blobs:
    """Blobs as objects ``<prefix><sub>/ab/cd/<sha256>`` (``fanout``) or ``<prefix><sub>/<sha256>``.

    A put is sent whole (one PUT up to ``multipart_threshold``) or as a
    multipart upload (parts of ``part_bytes``, each with its Content-MD5); it
    is confirmed when the server answered success and the ETag is the MD5 of
    what we sent (a plain PUT) or the MD5 of the parts' MD5s (multipart).  A
    put that failed or was cut leaves nothing visible: S3 makes an object
    visible only on a complete, checked PUT or a completed multipart upload;
    an unfinished multipart upload is aborted.
    """

    def __init__(self, url: S3Url, sub: str, *, fanout: bool = True, client: Any = None,
                 access_key_id: str = "", secret_access_key: str = "",
                 multipart_threshold: int = BLOB_S3_MULTIPART_THRESHOLD_BYTES,
                 part_bytes: int = BLOB_S3_PART_BYTES,
                 range_bytes: int = BLOB_S3_RANGE_BYTES,
                 orphan_grace_s: float = BLOB_S3_ORPHAN_GRACE_S) -> None:
        self.url = url
        self.sub = sub
        self.fanout = fanout
        self.client = client or s3_client(url, access_key_id=access_key_id,
                                          secret_access_key=secret_access_key)
        self.multipart_threshold = multipart_threshold
        self.part_bytes = max(part_bytes, 5 * 1024 * 1024)  # S3's smallest part but the last
        self.range_bytes = range_bytes
        self.orphan_grace_s = orphan_grace_s
        self.where = f"s3://{url.bucket}/{url.prefix}{sub}"
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors: tuple[type[BaseException], ...] = (BotoCoreError, ClientError)

    # -- names and errors
    def key(self, sha256: str) -> str:
        if self.fanout:
            return f"{self.url.prefix}{self.sub}/{sha256[:2]}/{sha256[2:4]}/{sha256}"
        return f"{self.url.prefix}{self.sub}/{sha256}"

    def _fail(self, what: str, key: str, exc: BaseException) -> BlobStoreError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        return BlobStoreError(f"{what} s3://{self.url.bucket}/{key} failed: {code}: {exc}")

    @staticmethod
    def _missing(exc: BaseException) -> bool:
        err = getattr(exc, "response", {}).get("Error", {})
        return str(err.get("Code")) in ("404", "NoSuchKey", "NotFound")

    def check(self) -> None:
        """Fail fast (at node start) when the bucket cannot be reached."""
        try:
            self.client.head_bucket(Bucket=self.url.bucket)
        except self._errors as exc:
            raise self._fail("HEAD bucket", "", exc) from exc

    # -- writes
    def check_room(self, size: int) -> None:
        pass  # the bucket's quota answers the PUT itself (then BlobStoreError)

    def put(self, data: bytes | memoryview, sha256: str) -> None:
        # Always sent, even when the object exists: content addressing makes it the
        # same bytes, and a fresh LastModified keeps recover() of another process
        # from taking it for an old orphan before our row commits.
        view = memoryview(data)
        key = self.key(sha256)
        if len(view) > self.multipart_threshold:
            self._put_multipart(key, sha256, lambda off, n: view[off:off + n], len(view))
            return
        md5 = hashlib.md5(view).digest()
        extra: dict[str, Any] = {}
        if self.url.checksum == "sha256":
            extra["ChecksumSHA256"] = _b64(bytes.fromhex(sha256))
        try:
            body = data if isinstance(data, bytes) else bytes(view)  # no copy of bytes
            resp = self.client.put_object(Bucket=self.url.bucket, Key=key, Body=body,
                                          ContentMD5=_b64(md5), ContentLength=len(view),
                                          **extra)
        except self._errors as exc:
            raise self._fail("PUT", key, exc) from exc
        etag = _etag(resp)
        # An SSE-KMS bucket answers an ETag that is not the MD5: the Content-MD5
        # the server checked is then the confirmation.
        if re.fullmatch(r"[0-9a-f]{32}", etag) and etag != md5.hex():
            raise BlobStoreError(f"PUT s3://{self.url.bucket}/{key}: ETag {etag} is not the "
                                 f"MD5 {md5.hex()} of the {len(view)} bytes sent")

    def put_file(self, path: Path, sha256: str) -> None:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            def piece(off: int, n: int) -> bytes:
                fh.seek(off)
                return fh.read(n)

            if size <= self.multipart_threshold:
                self.put(fh.read(), sha256)
            else:
                self._put_multipart(self.key(sha256), sha256, piece, size)
        path.unlink()

    def _put_multipart(self, key: str, sha256: str, piece: Any, size: int) -> None:
        bucket = self.url.bucket
        try:
            up = self.client.create_multipart_upload(Bucket=bucket, Key=key)
        except self._errors as exc:
            raise self._fail("multipart create", key, exc) from exc
        upload_id = up["UploadId"]
        try:
            parts, md5s = [], []
            for n, off in enumerate(range(0, size, self.part_bytes), start=1):
                body = bytes(piece(off, min(self.part_bytes, size - off)))
                md5 = hashlib.md5(body).digest()
                resp = self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                               PartNumber=n, Body=body, ContentMD5=_b64(md5))
                if _etag(resp) != md5.hex():
                    raise BlobStoreError(f"part {n} of s3://{bucket}/{key}: ETag "
                                         f"{_etag(resp)} is not its MD5 {md5.hex()}")
                parts.append({"PartNumber": n, "ETag": resp["ETag"]})
                md5s.append(md5)
            resp = self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
            want = f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(parts)}"
            if _etag(resp) != want:
                raise BlobStoreError(f"multipart s3://{bucket}/{key}: ETag {_etag(resp)} is "
                                     f"not {want}")
        except BaseException as exc:
            with contextlib.suppress(*self._errors):
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            if isinstance(exc, self._errors):
                raise self._fail("multipart upload", key, exc) from exc
            raise

    # -- reads
    def exists(self, sha256: str) -> bool:
        key = self.key(sha256)
        try:
            self.client.head_object(Bucket=self.url.bucket, Key=key)
        except self._errors as exc:
            if self._missing(exc):
                return False
            raise self._fail("HEAD", key, exc) from exc
        return True

    def size(self, sha256: str) -> int:
        key = self.key(sha256)
        try:
            return int(self.client.head_object(Bucket=self.url.bucket, Key=key)["ContentLength"])
        except self._errors as exc:
            if self._missing(exc):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), key) from exc
            raise self._fail("HEAD", key, exc) from exc

    def get_range(self, sha256: str, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset`` (fewer only at the object's end): one ranged GET."""
        if n <= 0:
            return b""
        key = self.key(sha256)
        try:
            resp = self.client.get_object(Bucket=self.url.bucket, Key=key,
                                          Range=f"bytes={offset}-{offset + n - 1}")
            return bytes(resp["Body"].read())
        except self._errors as exc:
            if self._missing(exc):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), key) from exc
            if "InvalidRange" in str(exc):
                return b""
            raise self._fail("GET", key, exc) from exc

    def read(self, sha256: str) -> bytes:
        key = self.key(sha256)
        try:
            return bytes(self.client.get_object(Bucket=self.url.bucket, Key=key)["Body"].read())
        except self._errors as exc:
            if self._missing(exc):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), key) from exc
            raise self._fail("GET", key, exc) from exc

    def chunks(self, sha256: str, offset: int, length: int, chunk_bytes: int
               ) -> Iterator[bytes]:
        """One ranged GET per ``range_bytes``, its body read ``chunk_bytes`` at a time."""
        key = self.key(sha256)
        end = offset + length
        pos = offset
        while pos < end:
            stop = min(end, pos + self.range_bytes)
            try:
                resp = self.client.get_object(Bucket=self.url.bucket, Key=key,
                                              Range=f"bytes={pos}-{stop - 1}")
            except self._errors as exc:
                if self._missing(exc):
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), key) from exc
                raise self._fail("GET", key, exc) from exc
            body = resp["Body"]
            try:
                while pos < stop:
                    piece = body.read(min(chunk_bytes, stop - pos))
                    if not piece:
                        raise BlobStoreError(f"GET s3://{self.url.bucket}/{key}: ends at "
                                             f"{pos}, short of {end}")
                    pos += len(piece)
                    yield piece
            finally:
                body.close()

    def open(self, sha256: str) -> BinaryIO:
        # Not wrapped in io.BufferedReader: pydicom takes one for a named file and
        # would re-open its .name for deferred values; the reader keeps its own window.
        return _RangeReader(self, sha256, self.size(sha256))  # type: ignore[return-value]

    def local_path(self, sha256: str) -> Path | None:
        return None

    def delete(self, sha256: str) -> None:
        key = self.key(sha256)
        try:
            self.client.delete_object(Bucket=self.url.bucket, Key=key)
        except self._errors as exc:
            if not self._missing(exc):
                raise self._fail("DELETE", key, exc) from exc

    def listing(self) -> Iterator[BlobInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.url.bucket, Prefix=f"{self.url.prefix}{self.sub}/")
        try:
            for page in pages:
                for obj in page.get("Contents", ()):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if re.fullmatch(r"[0-9a-f]{64}", name):
                        yield BlobInfo(name, int(obj["Size"]), obj["LastModified"].timestamp())
        except self._errors as exc:
            raise self._fail("LIST", f"{self.url.prefix}{self.sub}/", exc) from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class _RangeReader(io.RawIOBase):
    """A seekable read-only file over ranged GETs: what pydicom reads a header from.

    It keeps one window of the object.  A miss right after the window (reading
    on) doubles the next window, up to BLOB_S3_READAHEAD_MAX_BYTES; a seek
    elsewhere starts small again, so walking the item tags of a 2 GB cine costs
    a small GET per frame, not the frames.  Memory: one window.
    """

    def __init__(self, blobs: S3Blobs, sha256: str, size: int) -> None:
        super().__init__()
        self._blobs, self._sha, self._size = blobs, sha256, size
        self._pos = 0
        self._win_at, self._win = -1, b""  # no window yet: the first read is not "sequential"
        self._next = BLOB_S3_READAHEAD_MIN_BYTES

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        """Fill ``b`` up to the object's end (pydicom takes a short read for a truncated file)."""
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            n = self._read_some(view[done:])
            if n == 0:
                break
            done += n
        return done

    def _read_some(self, b: memoryview) -> int:
        want = min(len(b), self._size - self._pos)
        at = self._pos - self._win_at
        if not 0 <= at < len(self._win):
            sequential = self._pos == self._win_at + len(self._win)
            self._next = (min(self._next * 2, BLOB_S3_READAHEAD_MAX_BYTES) if sequential
                          else BLOB_S3_READAHEAD_MIN_BYTES)
            if want >= self._next:  # a large read goes straight into the caller's buffer
                data = self._blobs.get_range(self._sha, self._pos, want)
                n = len(data)
                b[:n] = data
                self._pos += n
                self._win_at, self._win = self._pos, b""
                return n
            self._win_at = self._pos
            self._win = self._blobs.get_range(self._sha, self._pos,
                                              min(self._next, self._size - self._pos))
            at = 0
            if not self._win:
                return 0
        n = min(want, len(self._win) - at)
        b[:n] = self._win[at:at + n]
        self._pos += n
        return n


def open_blobs(blob_url: str, folder: Path, tmp_dir: Path, *, store_root: Path, sub: str,
               fanout: bool, min_free_bytes: int = 0, access_key_id: str = "",
               secret_access_key: str = "", client: Any = None) -> LocalBlobs | S3Blobs:
    """The blob home ``store.blob_url`` names: the local ``folder`` or ``<url>/<sub>``."""
    url = parse_blob_url(blob_url)
    if url is None:
        return LocalBlobs(folder, tmp_dir, store_root=store_root,
                          min_free_bytes=min_free_bytes, fanout=fanout)
    return S3Blobs(url, sub, fanout=fanout, client=client, access_key_id=access_key_id,
                   secret_access_key=secret_access_key)
