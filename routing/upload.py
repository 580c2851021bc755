"""The upload protocol's sans-I/O core (as h11 is for HTTP): rules, no sockets, no files.

Both shells use it: :mod:`fenji.routing.transfer_server` asks it whether a
request may change an upload and what the upload's state becomes;
:mod:`fenji.routing.transfer_client` asks it what to send next and whether a
receipt covers what was sent.  Nothing here reads a clock, a file or a socket.

Upload states (one table, :data:`TRANSITIONS`)::

    receiving --append (offset == stored, checksum ok)--> receiving
    receiving --finalize (offset == length, bundle verified)--> complete
    receiving --reject (bundle failed verification)--> rejected

A chunk goes on top of the stored offset or not at all (409, nothing
changes); a checksum mismatch changes nothing (460, tus checksum extension);
``complete`` answers the same signed receipt for ever (exactly once by bundle
id); ``rejected`` never becomes anything else.

Chunks travel either as one ``PATCH`` each (``Upload-Checksum`` over the
body) or, pipelined, as a stream of frames in one ``PATCH`` with
``Content-Type: application/fenji-frames`` (:func:`frame_header`): each frame
carries its offset, length and SHA-256, and counts once it is fsynced, so a
stream cut anywhere keeps every whole frame before the cut (with
``Fenji-Finalize: on-complete`` the stream's answer is the receipt).  A bundle
small enough goes whole in its create request (:func:`check_whole`).

Deferred length (tus ``Upload-Defer-Length``): a bundle still being encoded
while it is sent (a version-2 bundle, ``codecs/BUNDLE.md``) is created with
``Upload-Defer-Length: 1`` and no ``Upload-Length`` (the signature covers the
empty length); its row holds length :data:`DEFERRED`.  The sender declares the
length once the bundle is whole and its release committed: with an empty frame
at the end offset (:func:`end_frame`), or ``Upload-Length`` on a later create.
Nothing can be finalized while the length is deferred.

>>> c = UploadClient(total=10)
>>> c.created(offset=4, state=RECEIVING)
>>> c.next_action(chunk_bytes=4)
SendChunk(offset=4, n=4)
>>> c.acked(8); c.next_action(chunk_bytes=4)
SendChunk(offset=8, n=2)
>>> c.acked(10); c.next_action(chunk_bytes=4)
Finalize()
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fenji.gateway.config import TRANSFER_CHUNK_HARD_MAX_BYTES

# The upload core raises the outbox core's error type (one state-table helper).
from fenji.routing.outbox import TransitionError as TransitionError
from fenji.routing.outbox import next_state

RECEIVING, COMPLETE, REJECTED = "receiving", "complete", "rejected"
# Given up after limits.abandoned_upload_s without a request: its bytes are removed;
# a create of the same bundle starts it again from offset 0 (routing/reaper.py).
ABANDONED = "abandoned"

# (state, event) -> next state.  The only place upload transitions are defined.
TRANSITIONS: dict[tuple[str, str], str] = {
    (RECEIVING, "append"): RECEIVING,
    (RECEIVING, "finalize"): COMPLETE,
    (RECEIVING, "reject"): REJECTED,
    (RECEIVING, "abandon"): ABANDONED,
    (ABANDONED, "reopen"): RECEIVING,
}


def abandoned_refusal() -> Refuse:
    """What a PATCH or finalize of an upload given up gets: 410, and how to go on (a
    sender retries with a create, which starts the bundle again)."""
    return Refuse(410, "upload_abandoned", "the upload was given up after "
                                           "limits.abandoned_upload_s without a request and "
                                           "its bytes removed: create it again to start over")

CHECKSUM_MISMATCH = 460  # tus checksum extension
MAX_CHUNK_BYTES = TRANSFER_CHUNK_HARD_MAX_BYTES  # gateway/config.py: one place for limits
MAX_LENGTH = 1 << 40
FRAMES_TYPE = "application/fenji-frames"
# On a frames PATCH: finalize as soon as the last frame is committed and answer the
# receipt (saves the finalize round trip).  Unsigned on purpose: finalizing is
# what any signed request from the sender may ask, and it is idempotent.
FINALIZE_HEADER = "Fenji-Finalize"
DEFER_HEADER = "Upload-Defer-Length"
DEFERRED = 0  # the stored length of an upload whose length is not declared yet
# A frame: offset (u64), length (u32), SHA-256 of the data (32 bytes), big-endian.
_FRAME = struct.Struct(">QI32s")
FRAME_HEADER_BYTES = _FRAME.size


def transition(state: str, event: str) -> str:
    return next_state(TRANSITIONS, "upload", state, event)


@dataclass(frozen=True, slots=True)
class Refuse:
    """The request changes nothing; answer ``status`` with this error.

    ``with_offset``: the answer carries the upload's offset headers, so the
    client resynchronises instead of guessing.
    """

    status: int
    error: str
    message: str
    with_offset: bool = False


def auth_message(method: str, path: str, ts: str, headers: Mapping[str, str], *,
                 receiver: str) -> bytes:
    """What a node signs for one request (shared by client and server).

    ``receiver`` is the node the request is meant for: a request captured on
    the way to one node does not verify at another.  Header names are matched
    without regard to case (RFC 9110 5.1): a proxy in between (HAProxy in HTTP
    mode) forwards them in lower case.
    """
    keys = ("Fenji-Bundle-Id", "Upload-Length", "Upload-Offset", "Upload-Checksum")
    folded: dict[str, str] = {}
    for k, v in headers.items():  # the first of repeated headers, as the handlers read them
        folded.setdefault(k.lower(), v)
    parts = [method.upper(), path, ts, f"receiver={receiver}"] + [
        f"{k}={folded.get(k.lower(), '')}" for k in keys]
    return "\n".join(parts).encode()


# --- server rules -------------------------------------------------------------------------


def check_create(bundle_id: str, length_header: str, defer_header: str = "") -> int | Refuse:
    """The upload length a create request asks for (:data:`DEFERRED` with
    ``Upload-Defer-Length: 1`` and no length), or why it is refused."""
    if defer_header and not length_header:
        if defer_header != "1":
            return Refuse(400, "bad_defer", f"Upload-Defer-Length {defer_header[:40]!r} "
                                            "must be 1")
        length_header = str(DEFERRED)
    try:
        length = int(length_header)
    except ValueError:
        return Refuse(400, "bad_length", f"Upload-Length {length_header[:40]!r} must be an "
                                         "integer")
    if not bundle_id or len(bundle_id) > 64 or not all(c.isalnum() or c in "-_"
                                                       for c in bundle_id):
        return Refuse(400, "bad_bundle_id", f"Fenji-Bundle-Id {bundle_id[:80]!r} is not 1-64 "
                                            "letters, digits, '-' or '_'")
    if not 0 < length <= MAX_LENGTH and not (defer_header and length == DEFERRED):
        return Refuse(400, "bad_length", f"Upload-Length {length} out of range "
                                         f"(1..{MAX_LENGTH})")
    return length


def check_existing(bundle_id: str, stored_length: int, length: int,
                   stored_offset: int = 0) -> Refuse | None:
    """A create for a bundle id already known: the same length resumes it; a deferred
    create resumes any; a length given for a deferred upload declares it (if no byte
    already lies beyond it)."""
    if length == DEFERRED:
        return None
    if stored_length == DEFERRED:
        if stored_offset > length:
            return Refuse(409, "length_mismatch", f"bundle {bundle_id} already holds "
                                                  f"{stored_offset} bytes, more than "
                                                  f"Upload-Length {length}")
        return None
    if stored_length != length:
        return Refuse(409, "length_mismatch", f"bundle {bundle_id} was created with length "
                                              f"{stored_length}, not {length}")
    return None


def check_append(state: str, stored_offset: int, offset_header: str,
                 content_length: int | None) -> int | Refuse:
    """Before reading a PATCH body: the offset it claims, or why it is refused."""
    if state == ABANDONED:
        return abandoned_refusal()
    if state != RECEIVING:
        return Refuse(409, "complete", "upload already finalized", with_offset=True)
    try:
        offset = int(offset_header)
    except ValueError:
        return Refuse(400, "bad_offset", f"Upload-Offset {offset_header[:40]!r} must be an "
                                         "integer")
    if offset != stored_offset:
        return Refuse(409, "offset_mismatch",
                      f"Upload-Offset {offset} != stored offset {stored_offset}",
                      with_offset=True)
    if (content_length or 0) > MAX_CHUNK_BYTES:
        return Refuse(413, "chunk_too_large", f"chunks are limited to {MAX_CHUNK_BYTES} bytes")
    return offset


def parse_checksum(header: str) -> bytes | Refuse:
    """``sha256 <base64 digest>`` -> the digest (a digest of the wrong size is a mismatch)."""
    algo, _, b64 = header.partition(" ")
    try:
        digest = base64.b64decode(b64, validate=True)
    except binascii.Error:
        algo = ""
    if algo != "sha256":
        return Refuse(400, "bad_checksum", f"Upload-Checksum {header[:80]!r} is not "
                                           "'sha256 <base64 digest>'")
    return digest


def check_chunk(offset: int, length: int, data: bytes, digest: bytes) -> Refuse | None:
    """After reading a chunk: does it fit the upload and match its checksum?"""
    if offset + len(data) > (MAX_LENGTH if length == DEFERRED else length):
        return Refuse(400, "beyond_length", f"chunk ends at {offset + len(data)}, beyond "
                                            f"Upload-Length {length}")
    if hashlib.sha256(data).digest() != digest:
        return Refuse(CHECKSUM_MISMATCH, "checksum_mismatch",
                      "Upload-Checksum (sha256) does not match the chunk", with_offset=True)
    return None


def check_finalize(state: str, offset: int, length: int) -> str | Refuse:
    """What a finalize does: ``"receipt"`` (answer the stored one), ``"ingest"``, or refuse."""
    if state == COMPLETE:
        return "receipt"
    if state == ABANDONED:
        return abandoned_refusal()
    if state == REJECTED:
        return Refuse(422, "bundle_rejected", "the bundle was refused; see the receiver's "
                                              "quarantine")
    if length == DEFERRED:
        return Refuse(409, "length_deferred", f"offset {offset}, length not declared yet",
                      with_offset=True)
    if offset != length:
        return Refuse(409, "incomplete", f"offset {offset} of {length} bytes", with_offset=True)
    transition(state, "finalize")
    return "ingest"


def check_whole(state: str, offset: int, length: int, data: bytes,
                digest: bytes) -> str | Refuse:
    """A create that carries the whole bundle (creation-with-upload).

    ``"receipt"``: it was finalized before (a resend after a lost answer);
    ``"write"``: store ``data`` from offset 0, then ingest; ``"ingest"``: every
    byte is already there (an earlier attempt died before finalizing).
    """
    if state == COMPLETE:
        return "receipt"
    if state in (REJECTED, ABANDONED):
        return check_finalize(state, offset, length)
    if len(data) != length:
        return Refuse(400, "not_whole", f"a create with a body must carry the whole bundle: "
                                        f"{len(data)} bytes sent, Upload-Length {length}")
    if (bad := check_chunk(0, length, data, digest)) is not None:
        return bad
    return "ingest" if offset == length else "write"


def frame_header(offset: int, data: bytes) -> bytes:
    """The header that precedes ``data`` in a pipelined stream."""
    return _FRAME.pack(offset, len(data), hashlib.sha256(data).digest())


def end_frame(offset: int) -> bytes:
    """The empty frame that ends a deferred-length upload: its length is ``offset``."""
    return frame_header(offset, b"")


def parse_frame_header(raw: bytes) -> tuple[int, int, bytes]:
    """(offset, length, sha256) of a frame header of :data:`FRAME_HEADER_BYTES` bytes."""
    offset, n, digest = _FRAME.unpack(raw)
    return int(offset), int(n), bytes(digest)


def check_frame(state: str, stored_offset: int, length: int, offset: int,
                n: int) -> Refuse | None:
    """Before reading a frame's data: does it go on top of the stored offset?  An
    empty frame declares a deferred upload's length (:func:`end_frame`)."""
    if state == ABANDONED:
        return abandoned_refusal()
    if state != RECEIVING:
        return Refuse(409, "complete", "upload already finalized", with_offset=True)
    if offset != stored_offset:
        return Refuse(409, "offset_mismatch",
                      f"frame at offset {offset} != stored offset {stored_offset}",
                      with_offset=True)
    if n == 0 and length == DEFERRED and offset > 0:
        return None
    if not 0 < n <= MAX_CHUNK_BYTES:
        return Refuse(400, "bad_frame", f"frame length {n} not in 1..{MAX_CHUNK_BYTES}")
    if offset + n > (MAX_LENGTH if length == DEFERRED else length):
        return Refuse(400, "beyond_length", f"frame ends at {offset + n}, beyond "
                                            f"Upload-Length {length}")
    return None


def offset_headers(upload_id: str, offset: int, length: int, state: str) -> dict[str, str]:
    """What every answer about an upload carries (tus: never cached)."""
    size = {DEFER_HEADER: "1"} if length == DEFERRED else {"Upload-Length": str(length)}
    return {"Upload-Offset": str(offset), **size,
            "Cache-Control": "no-store", "Fenji-Upload-State": state,
            "Location": f"/transfer/uploads/{upload_id}"}


# --- client rules -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendChunk:
    offset: int
    n: int


@dataclass(frozen=True, slots=True)
class Finalize:
    pass


class UploadClient:
    """The sending side of one upload: where it stands and what to send next."""

    def __init__(self, total: int | None) -> None:
        """``total`` None: the length is not known yet (:meth:`declared` later)."""
        if total is not None and total <= 0:
            raise ValueError(f"bundle length {total} must be positive")
        self.total = total
        self.offset = 0
        self.state = RECEIVING

    def created(self, offset: int, state: str) -> None:
        """The answer to a create (or a resync): the receiver's offset and state."""
        if not 0 <= offset <= (MAX_LENGTH if self.total is None else self.total):
            raise ValueError(f"receiver offset {offset} outside 0..{self.total}")
        self.offset, self.state = offset, state

    def declared(self, total: int) -> None:
        """The bundle is whole: its length is ``total``."""
        if total < self.offset or total <= 0:
            raise ValueError(f"bundle length {total} below the receiver's offset {self.offset}")
        self.total = total

    def acked(self, offset: int) -> None:
        """The receiver has made ``offset`` durable (a 204, or a frame's commit)."""
        if not self.offset <= offset <= (MAX_LENGTH if self.total is None else self.total):
            raise ValueError(f"acknowledged offset {offset} outside {self.offset}..{self.total}")
        self.offset = offset

    def next_action(self, chunk_bytes: int) -> SendChunk | Finalize:
        """Finalize once every byte is there (or the receiver has finalized already).
        With the length still unknown: a chunk of at most ``chunk_bytes`` (the shell
        sends what exists of it)."""
        if self.state != RECEIVING or (self.total is not None and self.offset >= self.total):
            return Finalize()
        left = chunk_bytes if self.total is None else self.total - self.offset
        return SendChunk(self.offset, min(max(1, chunk_bytes), left))


def checksum_header(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


def receipt_problem(receipt: dict[str, Any], *, receiver: str, bundle_id: str,
                    bundle_sha256: str, manifest: dict[str, Any]) -> str | None:
    """Why a (signature-checked) receipt does not cover exactly what was sent, or None."""
    if receipt.get("receiver") != receiver:
        return (f"receipt names receiver {receipt.get('receiver')!r}, not the peer "
                f"{receiver!r} the bundle was sent to")
    if receipt.get("bundle_id") != bundle_id:
        return f"receipt is for bundle {receipt.get('bundle_id')!r}"
    if receipt.get("bundle_sha256") != bundle_sha256:
        return "receipt bundle_sha256 differs from the bundle sent"
    want = {i["index"]: i["sha256"] for i in manifest["instances"]}
    got = {i["index"]: i["sha256"] for i in receipt.get("instances", [])}
    if want != got:
        missing = sorted(set(want) ^ set(got) | {k for k in want if got.get(k) != want[k]})
        return (f"receipt does not list every instance with its SHA-256 (first missing or "
                f"different: {missing[:5]})")
    return None
