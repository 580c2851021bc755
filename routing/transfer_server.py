"""Receiving bundles from other nodes: the tus-like upload protocol (server side).

The rules live in :mod:`fenji.routing.upload` (the sans-I/O core); this module
does the HTTP, the files and the database around them.

Routes (all under the node's HTTP API):

``POST /transfer/uploads``
    Create an upload.  Headers: ``Fenji-Bundle-Id``, ``Upload-Length`` (or
    ``Upload-Defer-Length: 1``: a bundle still being encoded, its length
    declared by an empty last frame or a later create's ``Upload-Length``).
    201 + ``Location`` + ``Upload-Offset: 0``.  The same bundle id again
    answers 200 with the existing upload and its offset (a sender that lost
    the response resumes instead of starting over), or, if that bundle was
    already finalized, 200 with ``Fenji-Upload-State: complete``.
    With a body and ``Upload-Checksum`` (a bundle up to the sender's
    ``transfer.single_request_bytes``): create, store, finalize and answer the
    receipt in one request; a resend answers the same receipt.  With a body of
    frames (``Content-Type: application/fenji-frames``, ``Upload-Offset``): the
    create goes on as a frames ``PATCH`` on the upload (no round trip before
    the first byte; an existing upload at another offset answers 409 with it).
``HEAD /transfer/uploads/{id}``
    ``Upload-Offset``, ``Upload-Length``, ``Cache-Control: no-store`` always.
``PATCH /transfer/uploads/{id}``
    ``Upload-Offset`` must equal the stored offset, else 409 and nothing
    changes.  ``Upload-Checksum: sha256 <base64>`` must match the body, else
    460 and nothing changes.  The chunk is appended and fsynced before the new
    offset is committed and answered (204).  With ``Content-Type:
    application/fenji-frames`` the body is a stream of frames (offset, length,
    SHA-256, data; :mod:`fenji.routing.upload`), each checked, fsynced and
    committed as it arrives; with ``Fenji-Finalize: on-complete`` the last
    frame is followed by the finalize and the answer is the receipt.
``POST /transfer/uploads/{id}/finalize``
    When the offset equals the length: the bundle is read section by section,
    every instance checked against the manifest's SHA-256 and fenji's
    validator, stored, and a receipt signed with this node's key is answered.
    Finalizing again answers the same receipt: delivery is exactly once.

A center may run several processes on one store behind a load balancer
(``[node] shared_store``), so any request of an upload may reach any of them,
and a sender whose process died resumes on another.  Everything an upload is
lives in the store: its row (offset, state, receipt) in the index, its bytes
in ``store/uploads/<id>.part``.  A chunk is written under an exclusive
``flock`` of that file and committed only if the row still has the offset it
was written at (else 409 with the offset, nothing changed); a bundle id gets
one upload row (``ON CONFLICT DO NOTHING``); and of two processes finalizing
the same upload, only the first to move the row from ``receiving`` records its
receipt: the other answers that one (ingest itself is idempotent).

Every request is signed by the sending node (``Fenji-Auth``, Ed25519 over
method, path, time, the receiving node's name and the upload headers); unknown
nodes, bad signatures, timestamps that are not finite or outside
``transfer.max_clock_skew_s``, and requests signed for another receiver get
403.  With ``http.tls`` these routes answer only on the mutual-TLS listener: a
signed request arriving over plain HTTP (the ``[web]`` listener) gets 403.
Errors are JSON: ``status``, ``error``, ``message``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fenji.codecs.compress.bundle import (
    MAX_MANIFEST,
    BundleReader,
    InstanceEvent,
    ManifestEvent,
    PreviewEvent,
)
from fenji.codecs.compress.pixel import pixel_info
from fenji.codecs.errors import DecodeError
from fenji.gateway import ingest
from fenji.gateway.config import PREVIEW_SECTIONS_MAX_BYTES
from fenji.gateway.ingest import Rejected, check_term
from fenji.gateway.keys import canonical_json, sign, verify
from fenji.gateway.store.blobs import BlobStoreError
from fenji.gateway.store.db import Store, StoreFull
from fenji.gateway.store.upload_parts import UploadParts
from fenji.routing import reaper, relay, upload
from fenji.routing.upload import auth_message

log = logging.getLogger(__name__)

CHECKSUM_MISMATCH = upload.CHECKSUM_MISMATCH
MAX_CHUNK_BYTES = upload.MAX_CHUNK_BYTES


def error(status: int, err: str, message: str, *,
          headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error; ``headers`` (the offset headers of a 409/460) go on the response."""
    body = {"status": status, "error": err, "message": message}
    return web.json_response(body, status=status,
                             headers={**(headers or {}), "Cache-Control": "no-store"})


@dataclass
class ReceiverContext:
    store: Store
    node_name: str
    key: Ed25519PrivateKey
    peers: dict[str, Ed25519PublicKey]
    upload_dir: Path
    max_clock_skew_s: float = 300.0
    # Where chunks wait until finalize: upload_dir, or the store's bucket
    # (store.blob_url), where any center process can resume the upload.
    parts: UploadParts | None = None
    # http.tls: node-to-node routes answer only on the mutual-TLS listener.
    require_tls: bool = False
    # Uploads one peer may have open at once (limits.max_uploads_per_peer).
    max_uploads_per_peer: int = 16
    # An upload no request touched for this long is given up (routing/reaper.py;
    # limits.abandoned_upload_s); 0: never.
    abandoned_upload_s: float = 0.0
    # Decoded samples one image preview may declare (limits.max_preview_pixels).
    max_preview_pixels: int = 4096 * 4096
    limits: ingest.Limits = field(default_factory=ingest.Limits)
    clock: Callable[[], float] = time.time
    # Called after a bundle is stored and its receipt signed, with the receipt,
    # the manifest and the bundle file; returns True when it kept the file
    # (a relay forwarding the same bundle onward), else the file is deleted.
    on_delivered: Callable[[dict[str, Any], dict[str, Any], Path], bool] | None = None
    # Called in a worker thread with the manifest, the upload row and its file as soon
    # as a streamed bundle's manifest is committed (once per PATCH stream): a relay
    # may queue a STAT bundle onward while it still arrives (routing/relay.py).
    on_manifest: Callable[[dict[str, Any], dict[str, Any], Path], None] | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def lock(self, upload_id: str) -> asyncio.Lock:
        return self._locks.setdefault(upload_id, asyncio.Lock())


CTX = web.AppKey("fenji_receiver", ReceiverContext)


def _unknown_node(request: web.Request, node: str) -> web.Response:
    """Refuse a node this one does not list, saying how to pair them (the key it
    presents is logged for comparison, never trusted)."""
    key = request.headers.get("Fenji-Key", "")
    shown = key[:64] if re.fullmatch(r"[0-9a-f]{64}", key) else "not sent"
    safe = node.encode("unicode_escape").decode()[:64]
    log.warning("transfer refused peer=%s node=%r reason=unknown-node key=%s: if this node "
                "should send here, run on it `fenji peer invite`, check that its key is %s, "
                "and run here `fenji peer add LINE`", request.remote, safe, shown, shown)
    return error(403, "unknown_node", f"node {safe!r} is not a configured peer of this node; "
                                      "pair them: `fenji peer invite` there, "
                                      "`fenji peer add LINE` here")


def _authenticate(ctx: ReceiverContext, request: web.Request) -> str | web.Response:
    raw = request.headers.get("Fenji-Auth", "")
    fields = dict(p.split("=", 1) for p in raw.split(";") if "=" in p)
    node, ts, sig = fields.get("node", ""), fields.get("ts", ""), fields.get("sig", "")
    pub = ctx.peers.get(node)
    if pub is None:
        return _unknown_node(request, node)
    try:
        sent_at = float(ts)
    except ValueError:
        return error(403, "bad_auth", f"Fenji-Auth ts={ts[:40]!r} is not a number")
    if not math.isfinite(sent_at):  # nan compares false to every bound: it never expires
        return error(403, "bad_auth", f"Fenji-Auth ts={ts[:40]!r} is not a finite time")
    skew = abs(ctx.clock() - sent_at)
    if skew > ctx.max_clock_skew_s:
        return error(403, "stale_request", f"request time is {skew:.0f}s off "
                                           f"(transfer.max_clock_skew_s={ctx.max_clock_skew_s})")
    sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
    if sslobj is None and ctx.require_tls:
        log.warning("transfer refused peer=%s node=%s reason=plain-http-with-tls",
                    request.remote, node)
        return error(403, "tls_required", "node-to-node routes answer only on the mutual-TLS "
                                          "listener ([http] with tls = true), not over plain "
                                          "HTTP")
    if sslobj is not None:
        # Mutual TLS: the certificate that opened the connection must be this node's.
        cert = sslobj.getpeercert() or {}
        cns = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
        if node not in cns:
            log.warning("transfer refused peer=%s node=%s reason=certificate-of-%s",
                        request.remote, node, cns)
            return error(403, "certificate_mismatch",
                         f"TLS client certificate {cns} does not belong to node {node!r}")
    msg = auth_message(request.method, request.path, ts, request.headers,
                       receiver=ctx.node_name)
    if not verify(pub, msg, sig):
        log.warning("transfer refused peer=%s node=%s reason=bad-signature", request.remote, node)
        return error(403, "bad_signature", f"signature of node {node!r} does not verify "
                                           f"for receiver {ctx.node_name!r}")
    return node


def _row(ctx: ReceiverContext, upload_id: str) -> dict[str, Any] | None:
    return ctx.store.query_one("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,))


def _owned_row(ctx: ReceiverContext, upload_id: str, who: str) -> dict[str, Any] | None:
    """The upload, if it exists and belongs to the authenticated sender (else None:
    another node's upload id is answered as not found, never revealed)."""
    row = _row(ctx, upload_id)
    return row if row is not None and row["sender"] == who else None


def _parts(ctx: ReceiverContext) -> UploadParts:
    if ctx.parts is None:
        ctx.parts = ctx.store.upload_parts(ctx.upload_dir)
    return ctx.parts


def _offset_headers(row: dict[str, Any]) -> dict[str, str]:
    return upload.offset_headers(row["upload_id"], row["offset"], row["length"], row["state"])


def _refuse(r: upload.Refuse, row: dict[str, Any] | None = None) -> web.Response:
    extra = _offset_headers(row) if r.with_offset and row is not None else {}
    return error(r.status, r.error, r.message, headers=extra)


async def _existing(ctx: ReceiverContext, request: web.Request, existing: dict[str, Any],
                    length: int, whole: bool, who: str) -> web.StreamResponse:
    """A create for a bundle already known: the same upload again (its offset, or
    the whole request's receipt), unless the lengths disagree.  One given up for
    want of requests (``abandoned``) starts again, empty."""
    if existing["state"] == upload.ABANDONED:
        existing = await asyncio.to_thread(reaper.reopen, ctx.store, _parts(ctx), existing,
                                           length, ctx.clock())
    bad = upload.check_existing(existing["bundle_id"], existing["length"], length,
                                existing["offset"])
    if bad is not None:
        return _refuse(bad)
    if existing["length"] == upload.DEFERRED and length != upload.DEFERRED:
        existing = await asyncio.to_thread(_declare_length, ctx, existing, length)
    if whole:
        return await _whole(ctx, request, existing["upload_id"], who)
    if request.content_type == upload.FRAMES_TYPE:  # frames from its Upload-Offset, or 409
        return await _stream_on(ctx, request, existing["upload_id"], who)
    return web.Response(status=200, headers=_offset_headers(existing))


async def _stream_on(ctx: ReceiverContext, request: web.Request, upload_id: str,
                     who: str) -> web.StreamResponse:
    """A create whose body is a stream of frames (creation-with-upload for a streamed
    bundle: no round trip before the first byte): as a frames PATCH on the upload."""
    async with ctx.lock(upload_id):
        row = _owned_row(ctx, upload_id, who)
        if row is None:
            return error(404, "no_upload", f"upload {upload_id} not found")
        return await _frames(ctx, request, row)


async def create_upload(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    who = _authenticate(ctx, request)
    if isinstance(who, web.Response):
        return who
    bundle_id = request.headers.get("Fenji-Bundle-Id", "")
    length = upload.check_create(bundle_id, request.headers.get("Upload-Length", ""),
                                 request.headers.get(upload.DEFER_HEADER, ""))
    if isinstance(length, upload.Refuse):
        return _refuse(length)
    whole = "Upload-Checksum" in request.headers  # creation-with-upload (tus)
    if whole and length == upload.DEFERRED:
        return error(400, "not_whole", "a create carrying the whole bundle must declare its "
                                       "Upload-Length")
    if whole and (request.content_length or 0) > MAX_CHUNK_BYTES:
        return error(413, "chunk_too_large", f"a bundle sent whole is limited to "
                                             f"{MAX_CHUNK_BYTES} bytes")
    existing = ctx.store.query_one("SELECT * FROM uploads WHERE bundle_id = ?", (bundle_id,))
    if existing is not None:
        return await _existing(ctx, request, existing, length, whole, who)
    # An upload untouched for an hour no longer counts: a sender that gave a
    # bundle up must not be locked out by its leftovers.
    open_now = ctx.store.query_one("SELECT COUNT(*) AS n FROM uploads WHERE sender = ? AND "
                                   "state = 'receiving' AND updated_at > ?",
                                   (who, ctx.clock() - 3600.0))
    if open_now is not None and open_now["n"] >= ctx.max_uploads_per_peer:
        log.warning("upload refused node=%s bundle=%s reason=%d-uploads-open", who, bundle_id,
                    open_now["n"])
        return error(429, "too_many_uploads", f"node {who!r} has {open_now['n']} uploads open, "
                                              f"limits.max_uploads_per_peer = "
                                              f"{ctx.max_uploads_per_peer}; finish one first")
    upload_id = uuid.uuid4().hex
    now = ctx.clock()
    await asyncio.to_thread(_parts(ctx).create, upload_id)
    with ctx.store.atomic() as con:
        # Another process of the center may be creating the same bundle's upload
        # right now (a sender that retried through the balancer): one row wins.
        inserted = con.execute(
            "INSERT INTO uploads(upload_id, bundle_id, sender, length, offset, state, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?) "
            "ON CONFLICT(bundle_id) DO NOTHING",
            (upload_id, bundle_id, who, length, upload.RECEIVING, now, now)).rowcount
    if not inserted:
        await asyncio.to_thread(_parts(ctx).remove, upload_id)
        existing = ctx.store.query_one("SELECT * FROM uploads WHERE bundle_id = ?",
                                       (bundle_id,))
        assert existing is not None  # rows are never deleted
        return await _existing(ctx, request, existing, length, whole, who)
    log.info("upload created node=%s bundle=%s upload=%s length=%d", who, bundle_id, upload_id,
             length)
    if whole:
        return await _whole(ctx, request, upload_id, who)
    if request.content_type == upload.FRAMES_TYPE:
        return await _stream_on(ctx, request, upload_id, who)
    created = _row(ctx, upload_id)
    assert created is not None
    return web.Response(status=201, headers=_offset_headers(created))


async def _whole(ctx: ReceiverContext, request: web.Request, upload_id: str,
                 who: str) -> web.StreamResponse:
    """A create carrying the whole bundle: store it, finalize, answer the receipt; the
    same receipt again for a resend after a lost answer (one round trip in all)."""
    digest = upload.parse_checksum(request.headers.get("Upload-Checksum", ""))
    if isinstance(digest, upload.Refuse):
        return _refuse(digest)
    data = await request.read()
    async with ctx.lock(upload_id):
        row = _owned_row(ctx, upload_id, who)
        if row is None:
            return error(404, "no_upload", f"upload {upload_id} not found")
        step = await asyncio.to_thread(upload.check_whole, row["state"], row["offset"],
                                       row["length"], data, digest)
        if isinstance(step, upload.Refuse):
            return _refuse(step, row)
        if step == "write":
            moved = await _commit_chunk(ctx, row, 0, data)
            # Another process wrote (or finalized) it meanwhile: finalize what is there.
            if moved is not None and row["state"] == upload.RECEIVING and \
                    row["offset"] != row["length"]:
                return _refuse(moved, row)
        return await _finalize(ctx, row, who, request.remote)


async def head_upload(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    who = _authenticate(ctx, request)
    if isinstance(who, web.Response):
        return who
    row = _owned_row(ctx, request.match_info["upload_id"], who)
    if row is None:
        return web.Response(status=404, headers={"Cache-Control": "no-store"})
    return web.Response(status=200, headers=_offset_headers(row))


def _own_upload(fn: Callable[[ReceiverContext, web.Request, dict[str, Any], str],
                             Awaitable[web.StreamResponse]]
                ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A request about one of the calling peer's uploads: authenticated, then under
    the upload's lock with its row (404 when it is no upload of this peer's)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CTX]
        who = _authenticate(ctx, request)
        if isinstance(who, web.Response):
            return who
        upload_id = request.match_info["upload_id"]
        async with ctx.lock(upload_id):
            row = _owned_row(ctx, upload_id, who)
            if row is None:
                return error(404, "no_upload", f"upload {upload_id} not found")
            return await fn(ctx, request, row, who)
    return handler


@_own_upload
async def patch_upload(ctx: ReceiverContext, request: web.Request, row: dict[str, Any],
                       who: str) -> web.StreamResponse:
    if request.content_type == upload.FRAMES_TYPE:
        return await _frames(ctx, request, row)
    offset = upload.check_append(row["state"], row["offset"],
                                 request.headers.get("Upload-Offset", ""),
                                 request.content_length)
    if isinstance(offset, upload.Refuse):
        return _refuse(offset, row)
    data = await request.read()
    digest = upload.parse_checksum(request.headers.get("Upload-Checksum", ""))
    if isinstance(digest, upload.Refuse):
        return _refuse(digest, row)
    bad = await asyncio.to_thread(upload.check_chunk, offset, row["length"], data, digest)
    if bad is not None:
        return _refuse(bad, row)
    moved = await _commit_chunk(ctx, row, offset, data)
    if moved is not None:
        return _refuse(moved, row)
    return web.Response(status=204, headers=_offset_headers(row))


async def _frames(ctx: ReceiverContext, request: web.Request,
                  row: dict[str, Any]) -> web.StreamResponse:
    """A pipelined stream of frames: each one verified, fsynced and committed as it
    arrives, so the sender never waits for an answer and a cut keeps every whole
    frame before it.  Answered once the stream ends (204 with the offset)."""
    first = upload.check_append(row["state"], row["offset"],
                                request.headers.get("Upload-Offset", ""), 0)
    if isinstance(first, upload.Refuse):
        return _refuse(first, row)
    frames = 0
    manifest_seen = ctx.on_manifest is None
    try:
        while True:
            try:
                head = await request.content.readexactly(upload.FRAME_HEADER_BYTES)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    return error(400, "bad_frame", f"stream ends inside a frame header after "
                                                   f"{frames} frames", headers=_offset_headers(row))
                break
            offset, n, digest = upload.parse_frame_header(head)
            bad = upload.check_frame(row["state"], row["offset"], row["length"], offset, n)
            if bad is not None:
                return _refuse(bad, row)
            data = await request.content.readexactly(n)
            bad = await asyncio.to_thread(upload.check_chunk, offset, row["length"], data,
                                          digest)
            if bad is not None:
                return _refuse(bad, row)
            if n == 0:  # the end of a deferred-length upload: its length is this offset
                row.update(await asyncio.to_thread(_declare_length, ctx, row, offset))
                if row["length"] != offset:
                    return _refuse(upload.Refuse(409, "length_mismatch", f"upload "
                                                 f"{row['upload_id']} moved meanwhile",
                                                 with_offset=True), row)
            else:
                moved = await _commit_chunk(ctx, row, offset, data)
                if moved is not None:
                    return _refuse(moved, row)
            frames += 1
            if not manifest_seen:
                manifest_seen = await _announce_manifest(ctx, row)
            if row["offset"] == row["length"] and \
                    request.headers.get(upload.FINALIZE_HEADER) == "on-complete":
                # The last frame is in: finalize now, not one round trip later.
                return await _finalize(ctx, row, str(row["sender"]), request.remote)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        # The sender's connection died mid-frame: every whole frame before counts.
        log.info("upload stream cut node=%s upload=%s frames=%d offset=%d reason=%s",
                 row["sender"], row["upload_id"], frames, row["offset"], type(exc).__name__)
        raise
    return web.Response(status=204, headers=_offset_headers(row))


async def _commit_chunk(ctx: ReceiverContext, row: dict[str, Any], offset: int,
                        data: bytes) -> upload.Refuse | None:
    """Append, fsync, then commit the new offset (the row is the commit point).

    When another process of the center moved the upload since ``row`` was read
    (its offset or state), nothing is written: ``row`` is refreshed from the
    index and the refusal to answer is returned (409 with the offset).
    """
    upload.transition(row["state"], "append")
    fresh = await asyncio.to_thread(_append_commit, ctx, row["upload_id"], offset, data)
    if fresh is None:
        row["offset"] = offset + len(data)
        relay.committed(row["bundle_id"])  # a cut-through forward waiting for these bytes
        return None
    row.update(fresh)
    refused = upload.check_append(fresh["state"], fresh["offset"], str(offset), 0)
    if isinstance(refused, upload.Refuse):
        return refused
    return upload.Refuse(409, "offset_mismatch", f"upload {row['upload_id']} moved meanwhile",
                         with_offset=True)


async def _announce_manifest(ctx: ReceiverContext, row: dict[str, Any]) -> bool:
    """Once the committed bytes hold the whole manifest, hand it to ``on_manifest``;
    True when done (or when the bytes will never make one: finalize refuses them)."""
    assert ctx.on_manifest is not None
    part = _parts(ctx).local_file(row["upload_id"])
    if part is None:
        return True  # chunks in a bucket: no growing file to forward from (store-and-forward)
    try:
        manifest = await asyncio.to_thread(_committed_manifest, part, row["offset"])
    except DecodeError:
        return True
    if manifest is None:
        return False
    await asyncio.to_thread(ctx.on_manifest, manifest, dict(row), part)
    return True


def _declare_length(ctx: ReceiverContext, row: dict[str, Any], length: int) -> dict[str, Any]:
    """Set a deferred upload's length (once; no byte may lie beyond it); the row as it
    is now (another process of the center may have declared it first)."""
    with ctx.store.atomic() as con:
        con.execute("UPDATE uploads SET length = ?, updated_at = ? WHERE upload_id = ? AND "
                    "length = ? AND offset <= ? AND state = ?",
                    (length, ctx.clock(), row["upload_id"], upload.DEFERRED, length,
                     upload.RECEIVING))
    fresh = _row(ctx, row["upload_id"])
    assert fresh is not None  # rows are never deleted
    log.info("upload length declared node=%s bundle=%s upload=%s length=%d", row["sender"],
             row["bundle_id"], row["upload_id"], fresh["length"])
    relay.committed(row["bundle_id"])  # a cut-through forward learns the length
    return fresh


def _committed_manifest(part: Path, committed: int) -> dict[str, Any] | None:
    """The manifest, if the first ``committed`` bytes of ``part`` hold all of it (only
    the manifest section is read and checked: BUNDLE.md, start + section header)."""
    head_n = 8 + 24  # the start (magic, version) and the manifest's section header
    if committed < head_n:
        return None
    with open(part, "rb") as fh:
        head = fh.read(head_n)
        (length,) = struct.unpack_from("<Q", head, 16)  # kind, index, then the length
        if length > MAX_MANIFEST:
            raise DecodeError(f"manifest of {length} bytes exceeds {MAX_MANIFEST}")
        if committed < head_n + length:
            return None
        body = fh.read(length)
    for ev in BundleReader().feed(head + body):
        if isinstance(ev, ManifestEvent):
            return ev.manifest
    return None


@contextlib.contextmanager
def _writer_turn(parts: UploadParts, upload_id: str) -> Iterator[bool]:
    """Take the upload's writer turn across the center's processes: the local part
    file's ``flock`` (False when the file is gone: finalized or refused meanwhile).  A
    bucket needs none: a chunk object names its offset and length, and only the chain
    the committed offsets make is read, so a stale writer's object is never used."""
    local = parts.local_file(upload_id)
    if local is None:
        yield True
        return
    try:
        fd = os.open(local, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # and with it the lock


def _append_commit(ctx: ReceiverContext, upload_id: str, offset: int,
                   data: bytes) -> dict[str, Any] | None:
    """Write ``data`` at ``offset`` and commit it if the upload is still at that offset;
    else (another process of the center moved it) change nothing and return the row as
    it is now.  The row, read in the writer's turn, says where the upload is; the commit
    is conditional on the offset it was written at."""
    parts = _parts(ctx)
    with _writer_turn(parts, upload_id) as there:
        row = _row(ctx, upload_id)
        if not there or row is None or row["state"] != upload.RECEIVING or \
                row["offset"] != offset:
            return row or {"state": upload.REJECTED}
        parts.append(upload_id, offset, data)  # fsynced, or confirmed by the bucket
        with ctx.store.atomic() as con:
            moved = con.execute("UPDATE uploads SET offset = ?, updated_at = ? WHERE "
                                "upload_id = ? AND offset = ?",
                                (offset + len(data), ctx.clock(), upload_id, offset)).rowcount
    return None if moved else (_row(ctx, upload_id) or {"state": upload.REJECTED})


MAX_PREVIEW_BYTES = PREVIEW_SECTIONS_MAX_BYTES  # gateway/config.py


def _check_preview_size(ctx: ReceiverContext, ev: PreviewEvent) -> None:
    """A preview declaring more decoded samples than limits.max_preview_pixels refuses
    the bundle: a few KB of zeros must not become a GB at every GET (issue 17)."""
    if ev.preview.kind != "image":
        return
    info = pixel_info(ev.preview.data)
    n = info["frames"] * info["rows"] * info["cols"] * info["samples"]
    if n > ctx.max_preview_pixels:
        raise DecodeError(f"preview {ev.index} declares {info['rows']}x{info['cols']} "
                          f"({n} samples), more than limits.max_preview_pixels = "
                          f"{ctx.max_preview_pixels}")


def _save_previews(ctx: ReceiverContext, manifest: dict[str, Any],
                   previews: list[tuple[int, bytes]]) -> None:
    case_id = str(manifest.get("case", {}).get("case_id") or "unknown")
    if not all(c.isalnum() for c in case_id):
        raise DecodeError(f"case id {case_id[:40]!r} is not alphanumeric")
    folder = ctx.store.root / "previews" / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for index, data in previews:
        # Per process and thread: two processes of a center may finalize one bundle.
        tmp = folder / f".{index}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / f"{index}.prev")


def _sender_default(manifest: dict[str, Any] | None, index: int) -> str | None:
    """The default character set the sender applied to instance ``index`` (its manifest's
    ``case.default_character_sets``), when it is a defined term; else None (ours)."""
    defaults = ((manifest or {}).get("case") or {}).get("default_character_sets")
    if not isinstance(defaults, list) or not 0 <= index < len(defaults):
        return None
    term = defaults[index]
    if not isinstance(term, str) or not term or check_term(term) is not None:
        return None
    return term


def _ingest_bundle(ctx: ReceiverContext,
                   row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify the finished upload whole, then make it visible at once; build the receipt.

    Every instance is checked and its blob staged (durable, invisible) while the
    bundle is read; previews are held back.  Only when the whole bundle has
    verified are the instances indexed, in one transaction, and the previews
    written.  A bundle refused at any point leaves nothing visible.
    """
    reader = BundleReader()
    manifest: dict[str, Any] | None = None
    previews: list[tuple[int, bytes]] = []
    preview_bytes = 0
    indexes: list[int] = []
    batch = ingest.Batch(ctx.store, ingest.Source("bundle", f"node:{row['sender']}"),
                         ctx.limits)
    bundle_sha = hashlib.sha256()
    for chunk in _parts(ctx).chunks(row["upload_id"], int(row["length"])):
        bundle_sha.update(chunk)
        for ev in reader.feed(chunk):
            if isinstance(ev, ManifestEvent):
                manifest = ev.manifest
            elif isinstance(ev, PreviewEvent):
                _check_preview_size(ctx, ev)
                data = ev.preview.to_bytes()
                preview_bytes += len(data)
                if preview_bytes > MAX_PREVIEW_BYTES:
                    raise DecodeError(f"bundle previews exceed {MAX_PREVIEW_BYTES} bytes")
                previews.append((ev.index, data))
            elif isinstance(ev, InstanceEvent):
                batch.add(ev.data, default_character_set=_sender_default(manifest, ev.index))
                indexes.append(ev.index)
    reader.close()
    if manifest is None:
        raise DecodeError("bundle has no manifest")
    results = batch.commit()
    if previews:
        _save_previews(ctx, manifest, previews)
    stored = [{"index": i, "sop_instance_uid": r.sop_instance_uid, "sha256": r.sha256}
              for i, r in zip(indexes, results, strict=True)]
    case = manifest.get("case", {})
    return {
        "type": "fenji-receipt", "version": 1, "bundle_id": row["bundle_id"],
        "case_id": case.get("case_id"), "sender": row["sender"], "receiver": ctx.node_name,
        "received_at": ctx.clock(), "bundle_sha256": bundle_sha.hexdigest(),
        "bundle_length": row["length"], "instances": stored,
    }, manifest


@_own_upload
async def finalize_upload(ctx: ReceiverContext, request: web.Request, row: dict[str, Any],
                          who: str) -> web.StreamResponse:
    return await _finalize(ctx, row, who, request.remote)


async def _finalize(ctx: ReceiverContext, row: dict[str, Any], who: str,
                    remote: str | None) -> web.StreamResponse:
    """Verify and store a whole upload, answer its receipt (the stored one if finalized)."""
    upload_id = row["upload_id"]
    step = upload.check_finalize(row["state"], row["offset"], row["length"])
    if isinstance(step, upload.Refuse):
        if step.error == "bundle_rejected":
            return error(422, "bundle_rejected", f"bundle {row['bundle_id']} was refused; "
                                                 "see the receiver's quarantine")
        return _refuse(step, row)
    if step == "receipt":  # a lost response: answer the same receipt
        return web.json_response({"receipt": json.loads(row["receipt_json"]),
                                  "signature": row["signature"], "signer": ctx.node_name},
                                 headers=_offset_headers(row))
    t0 = time.monotonic()
    try:
        receipt, manifest = await asyncio.to_thread(_ingest_bundle, ctx, row)
    except (FileNotFoundError, BlobStoreError):
        # Another process of the center finalized (or refused) it meanwhile and
        # removed the parts: answer as it decided (still receiving: a real fault).
        fresh = _row(ctx, upload_id)
        if fresh is None or fresh["state"] == upload.RECEIVING:
            raise
        return await _finalize(ctx, fresh, who, remote)
    except StoreFull as exc:  # nothing visible; the sender retries the finalize later
        log.warning("bundle refused node=%s bundle=%s reason=%s", who, row["bundle_id"], exc)
        return error(507, "store_full", str(exc))
    except (DecodeError, Rejected) as exc:
        log.warning("bundle rejected node=%s bundle=%s reason=%s", who, row["bundle_id"], exc)
        await asyncio.to_thread(
            ctx.store.quarantine_file, await asyncio.to_thread(_bundle_file, ctx, row),
            f"bundle: {exc}", calling_ae=f"node:{who}", peer_address=remote,
            uid_hint=row["bundle_id"])
        await asyncio.to_thread(_parts(ctx).remove, upload_id)
        state = upload.transition(row["state"], "reject")
        with ctx.store.atomic() as con:
            con.execute("UPDATE uploads SET state = ?, updated_at = ? WHERE upload_id = ? "
                        "AND state = ?", (state, ctx.clock(), upload_id, upload.RECEIVING))
        relay.committed(row["bundle_id"])  # a forward of it stops
        return error(422, "bundle_rejected", str(exc))
    # Record and (on a relay) queue onward before the upload counts as complete:
    # if that fails, the sender's retried finalize runs it again (idempotent).
    kept = False
    bundle_file: Path | None = None
    if ctx.on_delivered is not None:
        try:
            bundle_file = await asyncio.to_thread(_bundle_file, ctx, row)
        except (FileNotFoundError, BlobStoreError):
            fresh = _row(ctx, upload_id)  # finished by another process meanwhile?
            if fresh is None or fresh["state"] == upload.RECEIVING:
                raise
            return await _finalize(ctx, fresh, who, remote)
        kept = await asyncio.to_thread(ctx.on_delivered, receipt, manifest, bundle_file)
    signature = sign(ctx.key, canonical_json(receipt))
    state = upload.transition(row["state"], "finalize")
    first = await asyncio.to_thread(_record_receipt, ctx, upload_id, state, receipt, signature)
    if not first:  # another process of the center recorded its receipt first: that one
        fresh = _row(ctx, upload_id)
        assert fresh is not None
        log.info("bundle finalized by another process node=%s bundle=%s", who,
                 row["bundle_id"])
        return await _finalize(ctx, fresh, who, remote)
    row["state"] = state
    if not kept:
        if bundle_file is not None:
            with contextlib.suppress(OSError):
                bundle_file.unlink()
        await asyncio.to_thread(_parts(ctx).remove, upload_id)
    log.info("bundle received node=%s bundle=%s case=%s instances=%d bytes=%d ms=%.0f",
             who, row["bundle_id"], receipt["case_id"], len(receipt["instances"]),
             row["length"], (time.monotonic() - t0) * 1000)
    return web.json_response({"receipt": receipt, "signature": signature,
                              "signer": ctx.node_name}, headers=_offset_headers(row))


def _bundle_file(ctx: ReceiverContext, row: dict[str, Any]) -> Path:
    """The finished upload as one local file (quarantine, a relay's onward bundle):
    the part file itself, or the bucket's chunks copied into the store's tmp/."""
    parts = _parts(ctx)
    local = parts.local_file(row["upload_id"])
    if local is not None:
        return local
    # Per process and thread: two processes of a center may finalize one bundle.
    return parts.to_file(row["upload_id"], int(row["length"]), ctx.store.tmp_dir /
                         f"{row['upload_id']}.{os.getpid()}.{threading.get_ident()}.fbundle.tmp")


def _record_receipt(ctx: ReceiverContext, upload_id: str, state: str, receipt: dict[str, Any],
                    signature: str) -> bool:
    """Record the receipt if the upload is still receiving; False when another process
    of the center recorded one first (the index is the arbiter: one receipt per bundle)."""
    with ctx.store.atomic() as con:
        return con.execute("UPDATE uploads SET state = ?, receipt_json = ?, signature = ?, "
                           "updated_at = ? WHERE upload_id = ? AND state = ?",
                           (state, json.dumps(receipt, sort_keys=True), signature, ctx.clock(),
                            upload_id, upload.RECEIVING)).rowcount == 1


def add_routes(app: web.Application, ctx: ReceiverContext) -> None:
    ctx.upload_dir.mkdir(parents=True, exist_ok=True)
    app[CTX] = ctx
    app.router.add_post("/transfer/uploads", create_upload)
    app.router.add_route("HEAD", "/transfer/uploads/{upload_id}", head_upload)
    app.router.add_patch("/transfer/uploads/{upload_id}", patch_upload)
    app.router.add_post("/transfer/uploads/{upload_id}/finalize", finalize_upload)
    if ctx.abandoned_upload_s > 0:
        app.cleanup_ctx.append(reaper.background(ctx.store, lambda: _parts(ctx),
                                                 ctx.abandoned_upload_s, ctx.clock))
