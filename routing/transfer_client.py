"""Sending a bundle to another node: the upload protocol's client side.

:func:`send_bundle` creates (or finds) the upload for a bundle id, asks the
receiver for its offset, sends the rest in chunks whose size adapts to the link,
finalizes, and verifies the receiver's signed receipt against the bundle it
sent.  Any failure raises :class:`TransferError` (``retryable`` tells the
outbox whether to try again); a later call resumes at the receiver's offset.
Between chunks it asks ``should_yield()``: when a STAT case is waiting it
returns :class:`Yielded` so the outbox can send that first (preemption at chunk
boundaries); the upload stays where it is and resumes later.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fenji.codecs.errors import PeerError
from fenji.gateway.keys import canonical_json, fingerprint, sign, verify
from fenji.routing import upload
from fenji.routing.relay import StalledError
from fenji.routing.shaping import LinkMeter
from fenji.routing.upload import auth_message

log = logging.getLogger(__name__)

# A peer that does not know this node yet is asked again at most this often.
WAITING_FOR_PEER_RETRY_S = 30.0


class TransferError(PeerError):
    def __init__(self, message: str, *, retryable: bool = True,
                 waiting_for_peer: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        # The peer is up but does not list this node ([[peers]]): not a dead
        # job, a pairing still to be done on the other side.
        self.waiting_for_peer = waiting_for_peer


class ResumingContext(ssl.SSLContext):
    """A client TLS context that offers its peer's last session ticket on every new
    connection: TLS 1.3 resumption (RFC 8446 2.2), so a reconnect after a cut costs
    no certificate exchange.  The peer's certificate is still the pinned one: a
    ticket resumes only a session that verified it, and the receiver reads the
    client's certificate from the resumed session as from a full handshake.  One
    context per peer (a ticket belongs to one server); make it with
    ``keys.client_ssl_context(..., context_class=ResumingContext)``.

    asyncio creates each connection's :class:`ssl.SSLObject` through
    :meth:`wrap_bio`, which is where a session can be given (aiohttp has no
    parameter for it); the newest few are kept to read their tickets from.
    """

    # Connections kept to read tickets from (the newest first that has one): a
    # ticket arrives after the handshake, and the last connection may have died
    # before it did.
    KEEP = 4

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        if session is None and not server_side:
            session = self.reusable_session()
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        self._connections().appendleft(obj)
        return obj

    def _connections(self) -> collections.deque[ssl.SSLObject]:
        conns: collections.deque[ssl.SSLObject] | None = self.__dict__.get("_fenji_conns")
        if conns is None:
            conns = self.__dict__["_fenji_conns"] = collections.deque(maxlen=self.KEEP)
        return conns

    def reusable_session(self, now: float | None = None) -> ssl.SSLSession | None:
        """The newest session with a ticket that has not expired, or None."""
        now = time.time() if now is None else now
        for obj in self._connections():
            try:
                s = obj.session
            except (ValueError, ssl.SSLError):
                continue
            if s is not None and s.has_ticket and now < s.time + s.timeout:
                return s
        return None

    def handshakes(self) -> list[bool]:
        """For the connections kept, newest first: whether each resumed a session."""
        return [obj.session_reused for obj in self._connections()]


@dataclass(frozen=True)
class Delivered:
    receipt: dict[str, Any]
    signature: str
    signer: str
    bytes_sent: int  # this attempt
    seconds: float


@dataclass(frozen=True)
class Yielded:
    offset: int
    bytes_sent: int


@dataclass
class ChunkSizer:
    """Chunk size adapting to the link: aim for chunks of 5-10 s.

    Each PATCH waits for its answer, so every chunk costs one round trip of
    idle link: on a 600 ms satellite hop a 2 s chunk wastes a quarter of the
    link, a 6 s chunk a tenth.  Halved after a chunk dies with its connection.
    """

    size: int
    lo: int
    hi: int

    def update(self, nbytes: int, seconds: float) -> None:
        if seconds < 5.0 and nbytes >= self.size:
            self.size = min(self.hi, self.size * 2)
        elif seconds > 10.0:
            self.size = max(self.lo, self.size // 2)

    def failed(self) -> None:
        """A chunk died with its connection (a 3G handover, a reset): halve it, so
        a flaky link still makes progress between drops."""
        self.size = max(self.lo, self.size // 2)


class Sender:
    """Signs requests as this node."""

    def __init__(self, node_name: str, key: Ed25519PrivateKey) -> None:
        self.node_name = node_name
        self.key = key

    def headers(self, method: str, path: str, extra: dict[str, str], *,
                receiver: str) -> dict[str, str]:
        """``extra`` plus ``Fenji-Auth``, signed for the node named ``receiver`` only."""
        ts = f"{time.time():.3f}"
        sig = sign(self.key, auth_message(method, path, ts, extra, receiver=receiver))
        # The public key travels too (unsigned, it proves nothing): a receiver that
        # does not know this node yet logs its fingerprint for the pairing.
        return {**extra, "Fenji-Auth": f"node={self.node_name};ts={ts};sig={sig}",
                "Fenji-Key": self.public_hex}

    @property
    def public_hex(self) -> str:
        return fingerprint(self.key.public_key())


def _read_at(path: Path, offset: int, n: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(n)


async def _json_error(resp: aiohttp.ClientResponse) -> str:
    try:
        body = await resp.json(content_type=None)
        return f"{resp.status} {body.get('error')}: {body.get('message')}"
    except (ValueError, aiohttp.ClientError):
        return f"{resp.status} {resp.reason}"


@dataclass(frozen=True, slots=True)
class Pipeline:
    """How a bundle's bytes move (``[transfer]`` in the config).

    ``single_request_bytes``: a bundle up to this size goes whole in its create
    request, which answers the receipt (tus creation-with-upload): one round
    trip in all.  ``frame_bytes`` > 0: the rest streams as frames in one
    ``PATCH`` (never waiting for an answer between chunks); 0: one ``PATCH``
    per chunk, each waiting for its answer (the protocol's first form, kept
    for peers and tests that want it).  ``reconnects``: a stream cut after it
    moved bytes is resumed at once this many times, not after the outbox's
    backoff (a 3G handover is not a link that is down).
    """

    single_request_bytes: int = 0
    frame_bytes: int = 0
    reconnects: int = 3


_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)


class Growing(Protocol):
    """A bundle whose bytes are still coming (a relay's cut-through,
    :class:`fenji.routing.relay.Growing`; a bundle this node still encodes,
    :class:`fenji.routing.encoding.Encoding`): ``length`` None until it is known."""

    length: int | None
    available: int

    async def wait_for(self, n: int,
                       heartbeat: Callable[[], Awaitable[None]] | None = None) -> None:
        """Until the first ``n`` bytes are here, or the whole (shorter) bundle is."""

    def read_path(self, default: Path) -> Path:
        """The file its bytes are read from."""


async def send_bundle(session: aiohttp.ClientSession, base_url: str, sender: Sender,
                      peer_key: Ed25519PublicKey, bundle_path: Path, bundle_id: str, *,
                      receiver: str, sizer: ChunkSizer, manifest: dict[str, Any] | None,
                      should_yield: Callable[[], Awaitable[bool]] | None = None,
                      on_progress: Callable[[int, int], Awaitable[None]] | None = None,
                      ssl: Any = None, pace: Callable[[int], float] = lambda n: 0.0,
                      meter: LinkMeter | None = None,
                      pipeline: Pipeline = Pipeline(),
                      growing: Growing | None = None, fresh: bool = False
                      ) -> Delivered | Yielded:
    """Send one bundle; the rules come from :class:`fenji.routing.upload.UploadClient`.

    File reads and hashing run in worker threads: the loop also serves DICOMweb.
    ``growing``: the bundle's bytes are still coming (a relay's cut-through,
    :mod:`fenji.routing.relay`; a bundle this node still encodes,
    :mod:`fenji.routing.encoding`): each read waits until the bytes it needs are
    here; while its length is unknown the upload defers it (streamed frames only:
    with ``frame_bytes`` 0 the whole bundle is awaited first).  ``manifest`` None:
    read from the bundle once it is whole (to check the receipt).  ``fresh``: no
    byte of it was sent before (as far as the caller knows): streamed frames go in
    the create request itself (a wrong guess costs the bytes of one round trip).
    """
    up = _Upload(session, base_url.rstrip("/"), sender, bundle_path, bundle_id, receiver,
                 sizer, should_yield, on_progress, ssl, pace, meter or LinkMeter(), pipeline,
                 growing)
    if up.total is None and pipeline.frame_bytes <= 0:
        await up.until_length()
    if up.total is not None and up.total <= pipeline.single_request_bytes:
        body = await up.whole()
    else:
        out = await up.in_parts(fresh)
        if isinstance(out, Yielded):
            return out
        body = out
    receipt, signature = body["receipt"], body["signature"]
    path = up.file()
    if manifest is None:
        manifest = await asyncio.to_thread(manifest_of, path)
    await asyncio.to_thread(check_receipt, receipt, signature, peer_key, path, bundle_id,
                            manifest, receiver=receiver)
    return Delivered(receipt, signature, body.get("signer", ""), up.sent,
                     time.monotonic() - up.t0)


class _Upload:
    """The I/O of one :func:`send_bundle` call around an :class:`upload.UploadClient`."""

    def __init__(self, session: aiohttp.ClientSession, base: str, sender: Sender, path: Path,
                 bundle_id: str, receiver: str, sizer: ChunkSizer,
                 should_yield: Callable[[], Awaitable[bool]] | None,
                 on_progress: Callable[[int, int], Awaitable[None]] | None, ssl: Any,
                 pace: Callable[[int], float], meter: LinkMeter, pipeline: Pipeline,
                 growing: Growing | None = None) -> None:
        self.session, self.base, self.sender, self.path = session, base, sender, path
        self.bundle_id, self.receiver, self.sizer, self.ssl = bundle_id, receiver, sizer, ssl
        self.should_yield, self.on_progress, self.pace = should_yield, on_progress, pace
        self.meter, self.pipeline, self.growing = meter, pipeline, growing
        self.t0 = time.monotonic()
        self.total: int | None = (growing.length if growing is not None
                                  else os.path.getsize(path))
        self.stalled = ""  # why a cut-through forward stopped waiting for its bytes
        self.client = upload.UploadClient(self.total)
        self.sent = 0
        self.location = ""
        self.deferred = False  # the receiver's upload has no length yet

    def file(self) -> Path:
        return self.growing.read_path(self.path) if self.growing is not None else self.path

    async def _finalized(self, resp: Any, sent: int, c0: float) -> dict[str, Any]:
        """The receiver finalized with the last bytes sent: its answer is the receipt."""
        self.meter.chunk(sent, time.monotonic() - c0)
        self._learn_length()
        if self.total is not None:
            self.client.acked(self.total)
        await self._progress()
        done: dict[str, Any] = await resp.json()
        return done

    def _learn_length(self) -> None:
        """The growing bundle's length became known: declare it to the upload core."""
        if self.total is None and self.growing is not None and \
                self.growing.length is not None:
            self.total = self.growing.length
            self.client.declared(self.total)

    async def until_length(self) -> None:
        """Wait until the growing bundle is whole (its length known)."""
        assert self.growing is not None
        while self.total is None:
            if not await self._have(self.growing.available + 1):
                self._check_stalled()
            self._learn_length()

    def _headers(self, method: str, path: str, extra: dict[str, str]) -> dict[str, str]:
        return self.sender.headers(method, path, extra, receiver=self.receiver)

    def _create_headers(self) -> dict[str, str]:
        if self.total is None:  # tus Upload-Defer-Length: declared by the last frame
            return {"Fenji-Bundle-Id": self.bundle_id, upload.DEFER_HEADER: "1"}
        return {"Fenji-Bundle-Id": self.bundle_id, "Upload-Length": str(self.total)}

    async def _have(self, end: int) -> bool:
        """Wait until the first ``end`` bytes are here (a bundle still arriving at a
        relay); False when they will not come soon (``self.stalled`` says why)."""
        if self.growing is None:
            return True
        try:
            await self.growing.wait_for(end, heartbeat=self._progress)
        except StalledError as exc:
            self.stalled = str(exc)
            return False
        return True

    def _check_stalled(self) -> None:
        if self.stalled:
            raise TransferError(self.stalled, retryable=True)

    async def whole(self) -> dict[str, Any]:
        """Create, data and finalize in one request; the answer is the receipt."""
        assert self.total is not None
        if not await self._have(self.total):
            self._check_stalled()
        data = await asyncio.to_thread(_read_at, self.file(), 0, self.total)
        checksum = await asyncio.to_thread(upload.checksum_header, data)
        path = "/transfer/uploads"
        h = self._headers("POST", path, {**self._create_headers(), "Upload-Checksum": checksum,
                                         "Content-Type": "application/offset+octet-stream"})
        wait = self.pace(len(data))
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            r0 = time.monotonic()
            async with self.session.post(self.base + path, data=data, headers=h,
                                         ssl=self.ssl) as resp:
                if resp.status != 200:
                    if resp.status in (403, 404):
                        raise await _create_failed(resp, self.base, self.sender)
                    raise TransferError(f"send whole: {await _json_error(resp)}",
                                        retryable=resp.status not in (400, 413, 422))
                body: dict[str, Any] = await resp.json()
                self.meter.chunk(len(data), time.monotonic() - r0)
        except _ERRORS as exc:
            self.meter.error()
            raise TransferError(f"{type(exc).__name__}: {exc}".strip()) from exc
        self.sent = len(data)
        return body

    async def in_parts(self, fresh: bool = False) -> dict[str, Any] | Yielded:
        """Create (or find) the upload, send what the receiver lacks, finalize."""
        quiet_cuts = 0
        streaming_create = fresh and self.pipeline.frame_bytes > 0
        while True:
            before = self.sent
            try:
                if streaming_create:  # the first try: create and frames in one request
                    streaming_create = False
                    first = await self._create_streaming()
                    if first is not None:
                        return first
                await self._create()
                if self.pipeline.frame_bytes > 0:
                    out = await self._stream()
                else:
                    out = await self._chunks()
                if out is not None:
                    return out
                return await self._finalize()
            except _ERRORS as exc:
                self.meter.error()
                self.sizer.failed()
                quiet_cuts = 0 if self.sent > before else quiet_cuts + 1
                if self.pipeline.frame_bytes > 0 and quiet_cuts <= self.pipeline.reconnects \
                        and self.sent > before:
                    log.info("upload bundle=%s cut after %d bytes (%s); resuming at once",
                             self.bundle_id, self.sent - before, type(exc).__name__)
                    continue
                raise TransferError(f"{type(exc).__name__}: {exc}".strip()) from exc

    async def _create(self) -> None:
        path = "/transfer/uploads"
        h = self._headers("POST", path, self._create_headers())
        r0 = time.monotonic()
        async with self.session.post(self.base + path, headers=h, ssl=self.ssl) as resp:
            self.meter.rtt(time.monotonic() - r0)
            if resp.status not in (200, 201):
                raise await _create_failed(resp, self.base, self.sender)
            self.location = resp.headers["Location"]
            self.deferred = resp.headers.get(upload.DEFER_HEADER) == "1"
            self.client.created(int(resp.headers["Upload-Offset"]),
                                resp.headers.get("Fenji-Upload-State", upload.RECEIVING))

    async def _create_streaming(self) -> dict[str, Any] | Yielded | None:
        """Create the upload with the frames as its body (the first byte goes with the
        create, not one round trip later).  The receipt, Yielded, or None: go on as
        usual from the offset the answer gave (a 409: the upload existed elsewhere)."""
        path = "/transfer/uploads"
        h = self._headers("POST", path, {**self._create_headers(), "Upload-Offset": "0",
                                         "Content-Type": upload.FRAMES_TYPE,
                                         upload.FINALIZE_HEADER: "on-complete"})
        yielded = [False]
        c0 = time.monotonic()
        async with self.session.post(self.base + path, data=self._frames(0, yielded),
                                     headers=h, ssl=self.ssl) as resp:
            if resp.status in (200, 201, 204, 409) and "Location" in resp.headers:
                self.location = resp.headers["Location"]
                self.deferred = resp.headers.get(upload.DEFER_HEADER) == "1"
            if resp.status == 200 and resp.content_type == "application/json":
                return await self._finalized(resp, self.sent, c0)  # the receipt
            if resp.status in (200, 201, 204) and self.location:
                self.client.created(int(resp.headers["Upload-Offset"]),
                                    resp.headers.get("Fenji-Upload-State", upload.RECEIVING))
                self.meter.chunk(self.sent, time.monotonic() - c0)
                await self._progress()
                if yielded[0]:
                    return Yielded(self.client.offset, self.sent)
                self._check_stalled()
                return None
            if resp.status == 409 and self.location and self._resync(resp):
                return None
            raise await _create_failed(resp, self.base, self.sender)

    async def _yield_now(self) -> bool:
        return self.should_yield is not None and await self.should_yield()

    async def _progress(self, offset: int | None = None) -> None:
        """Tell the outbox (a heartbeat for the lease): acknowledged bytes, or during a
        stream the bytes handed to the link."""
        if self.on_progress is not None:
            await self.on_progress(self.client.offset if offset is None else offset,
                                   self.total or 0)

    def _resync(self, resp: aiohttp.ClientResponse) -> bool:
        """A 409/460 carrying the receiver's offset: go on from there."""
        if resp.status in (409, upload.CHECKSUM_MISMATCH) and "Upload-Offset" in resp.headers:
            self.client.created(int(resp.headers["Upload-Offset"]),
                                resp.headers.get("Fenji-Upload-State", self.client.state))
            return True
        return False

    async def _chunks(self) -> dict[str, Any] | Yielded | None:
        """One PATCH per chunk, each waiting for its answer."""
        while isinstance(step := self.client.next_action(self.sizer.size), upload.SendChunk):
            if await self._yield_now():
                return Yielded(self.client.offset, self.sent)
            if not await self._have(step.offset + step.n):
                self._check_stalled()
            chunk = await asyncio.to_thread(_read_at, self.file(), step.offset, step.n)
            wait = self.pace(len(chunk))  # the hospital's share of its link (shaping.py)
            if wait > 0:
                await asyncio.sleep(wait)
            checksum = await asyncio.to_thread(upload.checksum_header, chunk)
            h = self._headers("PATCH", self.location, {
                "Upload-Offset": str(step.offset), "Upload-Checksum": checksum,
                "Content-Type": "application/offset+octet-stream"})
            c0 = time.monotonic()
            async with self.session.patch(self.base + self.location, data=chunk, headers=h,
                                          ssl=self.ssl) as resp:
                if resp.status == 204:
                    self.client.acked(int(resp.headers["Upload-Offset"]))
                    self.sent += len(chunk)
                    self.sizer.update(len(chunk), time.monotonic() - c0)
                    self.meter.chunk(len(chunk), time.monotonic() - c0)
                    await self._progress()
                    continue
                if resp.status == 409 and self._resync(resp):
                    continue
                raise TransferError(f"PATCH at {step.offset}: {await _json_error(resp)}",
                                    retryable=resp.status != 400)
        return None

    async def _stream(self) -> dict[str, Any] | Yielded | None:
        """The rest as one streaming PATCH of frames; the answer comes once, at the end:
        the receipt when the receiver finalized on the last frame (else None: finalize)."""
        refusals = 0
        while isinstance(step := self.client.next_action(self.pipeline.frame_bytes),
                         upload.SendChunk):
            start = step.offset
            if await self._yield_now():  # not even an empty stream: go at once
                return Yielded(self.client.offset, self.sent)
            yielded = [False]
            h = self._headers("PATCH", self.location, {
                "Upload-Offset": str(start), "Content-Type": upload.FRAMES_TYPE,
                upload.FINALIZE_HEADER: "on-complete"})
            c0 = time.monotonic()
            sent0 = self.sent
            body = self._frames(start, yielded)
            async with self.session.patch(self.base + self.location, data=body, headers=h,
                                          ssl=self.ssl) as resp:
                if resp.status == 200:  # the last frame went in and the receiver finalized
                    return await self._finalized(resp, self.sent - sent0, c0)
                if resp.status == 204:
                    self.client.acked(int(resp.headers["Upload-Offset"]))
                    self.meter.chunk(self.sent - sent0, time.monotonic() - c0)
                    await self._progress()
                    if yielded[0]:
                        return Yielded(self.client.offset, self.sent)
                    self._check_stalled()
                    continue
                if self._resync(resp) and refusals < 3:
                    refusals += 1
                    continue
                raise TransferError(f"PATCH stream at {start}: {await _json_error(resp)}",
                                    retryable=resp.status not in (400, 422))
        return None

    async def _frames(self, off: int, yielded: list[bool]) -> AsyncIterator[bytes]:
        """Frames from ``off`` to the end, or until a job of higher priority is ready;
        a deferred upload's end is an empty frame declaring its length."""
        while True:
            if await self._yield_now():
                yielded[0] = True
                return
            # While the length is unknown, what is written goes at once (the encoder
            # flushes a section at a time); else whole frames.
            end = off + 1 if self.total is None else \
                min(off + self.pipeline.frame_bytes, self.total)
            if not await self._have(end):
                return  # the stream ends here; the caller raises (retryable)
            self._learn_length()
            limit = self.growing.available if self.total is None and self.growing else \
                self.total
            assert limit is not None
            n = min(self.pipeline.frame_bytes, limit - off)
            if n <= 0:
                if self.total is not None and off >= self.total:
                    if self.deferred:  # whole and its release committed: declare it
                        self.deferred = False
                        yield upload.end_frame(off)
                    return
                continue
            data = await asyncio.to_thread(_read_at, self.file(), off, n)
            wait = self.pace(n)  # the hospital's share of its link (routing/shaping.py)
            if wait > 0:
                await asyncio.sleep(wait)
            head = await asyncio.to_thread(upload.frame_header, off, data)
            yield head + data
            off += n
            self.sent += n
            await self._progress(off)

    async def _finalize(self) -> dict[str, Any]:
        h = self._headers("POST", self.location + "/finalize", {})
        async with self.session.post(self.base + self.location + "/finalize", headers=h,
                                     ssl=self.ssl) as resp:
            if resp.status != 200:
                raise TransferError(f"finalize: {await _json_error(resp)}",
                                    retryable=resp.status != 422)
            body: dict[str, Any] = await resp.json()
            return body


async def _create_failed(resp: aiohttp.ClientResponse, base: str,
                         sender: Sender) -> TransferError:
    why = await _json_error(resp)
    if resp.status == 404 or "unknown_node" in why:
        return TransferError(f"waiting for peer: {base} does not know node "
                             f"{sender.node_name!r} yet ({why}); on that node run "
                             "`fenji peer add` with the line `fenji peer invite` "
                             "prints here", waiting_for_peer=True)
    return TransferError(f"create upload: {why}",
                         retryable=resp.status >= 500 or resp.status == 429)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_receipt(receipt: dict[str, Any], signature: str, peer_key: Ed25519PublicKey,
                  bundle_path: Path, bundle_id: str, manifest: dict[str, Any], *,
                  receiver: str) -> None:
    """The receipt is signed by the peer, names it as the receiver and covers exactly
    what we sent (hashes the whole bundle: call it from a worker thread)."""
    if not verify(peer_key, canonical_json(receipt), signature):
        raise TransferError("receipt signature does not verify with the peer's key",
                            retryable=False)
    problem = upload.receipt_problem(receipt, receiver=receiver, bundle_id=bundle_id,
                                     bundle_sha256=file_sha256(bundle_path), manifest=manifest)
    if problem is not None:
        raise TransferError(problem, retryable=False)


def manifest_of(bundle_path: Path) -> dict[str, Any]:
    """Read just the manifest section of a bundle file."""
    from fenji.codecs.compress.bundle import BundleReader, ManifestEvent

    reader = BundleReader()
    with open(bundle_path, "rb") as fh:
        while True:
            chunk = fh.read(64 * 1024)
            if not chunk:
                break
            for ev in reader.feed(chunk):
                if isinstance(ev, ManifestEvent):
                    return ev.manifest
    raise TransferError(f"{bundle_path}: no manifest", retryable=False)


def dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True)
