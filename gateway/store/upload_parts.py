"""Where the bytes of an upload in progress wait (routing/transfer_server.py).

A bundle arrives in chunks at offsets; each chunk is made durable here before
the upload's row commits the new offset (the row is the commit point, as for
blobs).  Two homes, chosen with the blobs (``store.blob_url``):

* :class:`LocalParts` — one file ``uploads/<id>.part`` on this machine, written
  at the offset and fsynced: a node's default, as before.
* :class:`S3Parts` — one object per chunk, ``<prefix>uploads/<id>/<offset>-<length>``
  (zero-padded), PUT with its checksums: any center process that shares the
  bucket and the index can take the upload over where another left it (HEAD
  answers the committed offset, the next PATCH lands beside the others).

A chunk written but not committed (its process died in between) is harmless:
its key names its offset and length, and :meth:`S3Parts.chunks` follows only
the chain from 0 to the committed length, so a later chunk at the same offset
with another length never mixes with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from fenji.gateway.store.blobs import BlobStoreError, S3Blobs, _b64

_CHUNK_KEY = re.compile(r"(\d{16})-(\d{16})")


class UploadParts(Protocol):
    def create(self, upload_id: str) -> None: ...

    def append(self, upload_id: str, offset: int, data: bytes) -> None:
        """Make ``data`` at ``offset`` durable (before the caller commits the offset)."""
        ...

    def chunks(self, upload_id: str, length: int) -> Iterator[bytes]:
        """The upload's bytes ``[0, length)`` in order."""
        ...

    def local_file(self, upload_id: str) -> Path | None:
        """The upload as one file on this machine (LocalParts), else ``None``."""
        ...

    def to_file(self, upload_id: str, length: int, dest: Path) -> Path:
        """The upload's bytes written to ``dest`` (quarantine, a relay's bundle)."""
        ...

    def remove(self, upload_id: str) -> None: ...


class LocalParts:
    """``<folder>/<upload_id>.part``, written at the offset, truncated after it, fsynced."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, upload_id: str) -> Path:
        return self.folder / f"{upload_id}.part"

    def create(self, upload_id: str) -> None:
        self.path(upload_id).touch()

    def append(self, upload_id: str, offset: int, data: bytes) -> None:
        fd = os.open(self.path(upload_id), os.O_WRONLY)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.ftruncate(fd, offset + len(data))
            os.fsync(fd)
        finally:
            os.close(fd)

    def chunks(self, upload_id: str, length: int) -> Iterator[bytes]:
        with open(self.path(upload_id), "rb") as fh:
            yield from iter(lambda: fh.read(1 << 20), b"")

    def local_file(self, upload_id: str) -> Path | None:
        return self.path(upload_id)

    def to_file(self, upload_id: str, length: int, dest: Path) -> Path:
        return self.path(upload_id)  # already one

    def remove(self, upload_id: str) -> None:
        with contextlib.suppress(OSError):
            self.path(upload_id).unlink()


class S3Parts:
    """One object per committed chunk under ``<prefix>uploads/<upload_id>/``."""

    def __init__(self, blobs: S3Blobs, tmp_dir: Path) -> None:
        self.blobs = blobs
        self.client = blobs.client
        self.bucket = blobs.url.bucket
        self.tmp_dir = Path(tmp_dir)
        self.base = f"{blobs.url.prefix}uploads/"

    def _prefix(self, upload_id: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id):  # uuid4().hex, never a path
            raise BlobStoreError(f"upload id {upload_id!r} is not 32 hex digits")
        return f"{self.base}{upload_id}/"

    def create(self, upload_id: str) -> None:
        self._prefix(upload_id)

    def append(self, upload_id: str, offset: int, data: bytes) -> None:
        key = f"{self._prefix(upload_id)}{offset:016d}-{len(data):016d}"
        extra = {}
        if self.blobs.url.checksum == "sha256":
            extra["ChecksumSHA256"] = _b64(hashlib.sha256(data).digest())
        md5 = hashlib.md5(data).digest()
        try:
            resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                          ContentMD5=_b64(md5), ContentLength=len(data), **extra)
        except self.blobs._errors as exc:
            raise self.blobs._fail("PUT", key, exc) from exc
        etag = str(resp.get("ETag", "")).strip('"').lower()
        if re.fullmatch(r"[0-9a-f]{32}", etag) and etag != md5.hex():
            raise BlobStoreError(f"PUT s3://{self.bucket}/{key}: ETag {etag} is not the MD5 "
                                 f"{md5.hex()} of the {len(data)} bytes sent")

    def _listed(self, upload_id: str) -> dict[int, list[tuple[int, str]]]:
        """offset -> [(length, key)] of every chunk object of the upload."""
        found: dict[int, list[tuple[int, str]]] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._prefix(upload_id))
        try:
            for page in pages:
                for obj in page.get("Contents", ()):
                    m = _CHUNK_KEY.fullmatch(obj["Key"].rsplit("/", 1)[-1])
                    if m and int(obj["Size"]) == int(m.group(2)):
                        found.setdefault(int(m.group(1)), []).append((int(m.group(2)),
                                                                      obj["Key"]))
        except self.blobs._errors as exc:
            raise self.blobs._fail("LIST", self._prefix(upload_id), exc) from exc
        return found

    def _chain(self, upload_id: str, length: int) -> list[str]:
        """The chunk keys that tile ``[0, length)``: each starts where the one before
        ended (a depth-first walk; a stale chunk off the chain is skipped)."""
        found = self._listed(upload_id)
        dead: set[int] = set()

        def walk(at: int) -> list[str] | None:
            if at == length:
                return []
            if at in dead:
                return None
            for n, key in sorted(found.get(at, ()), reverse=True):
                rest = walk(at + n) if n > 0 and at + n <= length else None
                if rest is not None:
                    return [key, *rest]
            dead.add(at)
            return None

        keys = walk(0) if length > 0 else []
        if keys is None:
            raise BlobStoreError(f"upload {upload_id}: the chunks in s3://{self.bucket}/"
                                 f"{self._prefix(upload_id)} do not tile 0-{length}")
        return keys

    def chunks(self, upload_id: str, length: int) -> Iterator[bytes]:
        for key in self._chain(upload_id, length):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except self.blobs._errors as exc:
                raise self.blobs._fail("GET", key, exc) from exc
            try:
                while piece := body.read(1 << 20):
                    yield piece
            finally:
                body.close()

    def local_file(self, upload_id: str) -> Path | None:
        return None

    def to_file(self, upload_id: str, length: int, dest: Path) -> Path:
        with open(dest, "wb") as fh:
            for piece in self.chunks(upload_id, length):
                fh.write(piece)
        return dest

    def remove(self, upload_id: str) -> None:
        # One DELETE each: DeleteObjects wants a Content-MD5 that not every
        # S3-compatible server accepts from botocore's checksum defaults.
        with contextlib.suppress(BlobStoreError):
            for ks in self._listed(upload_id).values():
                for _, key in ks:
                    with contextlib.suppress(*self.blobs._errors):
                        self.client.delete_object(Bucket=self.bucket, Key=key)
