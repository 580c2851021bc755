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
import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fenji.codecs.errors import PeerError
from fenji.gateway.keys import canonical_json, fingerprint, sign, verify
from fenji.routing.shaping import LinkMeter
from fenji.routing.transfer_server import auth_message

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


async def send_bundle(session: aiohttp.ClientSession, base_url: str, sender: Sender,
                      peer_key: Ed25519PublicKey, bundle_path: Path, bundle_id: str, *,
                      receiver: str, sizer: ChunkSizer, manifest: dict[str, Any],
                      should_yield: Callable[[], bool] = lambda: False,
                      on_progress: Callable[[int, int], None] = lambda offset, total: None,
                      ssl: Any = None, pace: Callable[[int], float] = lambda n: 0.0,
                      meter: LinkMeter | None = None) -> Delivered | Yielded:
    t0 = time.monotonic()
    total = os.path.getsize(bundle_path)
    base = base_url.rstrip("/")
    path = "/transfer/uploads"
    h = sender.headers("POST", path, {"Fenji-Bundle-Id": bundle_id, "Upload-Length": str(total)},
                       receiver=receiver)
    meter = meter or LinkMeter()
    try:
        r0 = time.monotonic()
        async with session.post(base + path, headers=h, ssl=ssl) as resp:
            meter.rtt(time.monotonic() - r0)
            if resp.status not in (200, 201):
                why = await _json_error(resp)
                if resp.status == 404 or "unknown_node" in why:
                    raise TransferError(f"waiting for peer: {base} does not know node "
                                        f"{sender.node_name!r} yet ({why}); on that node run "
                                        "`fenji peer add` with the line `fenji peer invite` "
                                        "prints here", waiting_for_peer=True)
                raise TransferError(f"create upload: {why}",
                                    retryable=resp.status >= 500 or resp.status == 429)
            location = resp.headers["Location"]
            offset = int(resp.headers["Upload-Offset"])
            state = resp.headers.get("Fenji-Upload-State", "receiving")
        sent = 0
        while state == "receiving" and offset < total:
            if should_yield():
                return Yielded(offset, sent)
            chunk = _read_at(bundle_path, offset, sizer.size)
            wait = pace(len(chunk))  # the hospital's share of its link (routing/shaping.py)
            if wait > 0:
                await asyncio.sleep(wait)
            digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
            h = sender.headers("PATCH", location, {
                "Upload-Offset": str(offset), "Upload-Checksum": f"sha256 {digest}",
                "Content-Type": "application/offset+octet-stream"}, receiver=receiver)
            c0 = time.monotonic()
            async with session.patch(base + location, data=chunk, headers=h, ssl=ssl) as resp:
                if resp.status == 204:
                    offset = int(resp.headers["Upload-Offset"])
                    sent += len(chunk)
                    sizer.update(len(chunk), time.monotonic() - c0)
                    meter.chunk(len(chunk), time.monotonic() - c0)
                    on_progress(offset, total)
                    continue
                if resp.status == 409 and "Upload-Offset" in resp.headers:
                    offset = int(resp.headers["Upload-Offset"])  # resync and go on
                    state = resp.headers.get("Fenji-Upload-State", state)
                    continue
                raise TransferError(f"PATCH at {offset}: {await _json_error(resp)}",
                                    retryable=resp.status != 400)
        h = sender.headers("POST", location + "/finalize", {}, receiver=receiver)
        async with session.post(base + location + "/finalize", headers=h, ssl=ssl) as resp:
            if resp.status != 200:
                raise TransferError(f"finalize: {await _json_error(resp)}",
                                    retryable=resp.status != 422)
            body = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        meter.error()
        sizer.failed()
        raise TransferError(f"{type(exc).__name__}: {exc}".strip()) from exc
    receipt, signature = body["receipt"], body["signature"]
    check_receipt(receipt, signature, peer_key, bundle_path, bundle_id, manifest,
                  receiver=receiver)
    return Delivered(receipt, signature, body.get("signer", ""), sent, time.monotonic() - t0)


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
    what we sent."""
    if not verify(peer_key, canonical_json(receipt), signature):
        raise TransferError("receipt signature does not verify with the peer's key",
                            retryable=False)
    if receipt.get("receiver") != receiver:
        raise TransferError(f"receipt names receiver {receipt.get('receiver')!r}, not the "
                            f"peer {receiver!r} the bundle was sent to", retryable=False)
    if receipt.get("bundle_id") != bundle_id:
        raise TransferError(f"receipt is for bundle {receipt.get('bundle_id')!r}",
                            retryable=False)
    if receipt.get("bundle_sha256") != file_sha256(bundle_path):
        raise TransferError("receipt bundle_sha256 differs from the bundle sent",
                            retryable=False)
    want = {i["index"]: i["sha256"] for i in manifest["instances"]}
    got = {i["index"]: i["sha256"] for i in receipt.get("instances", [])}
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        raise TransferError(f"receipt does not list every instance with its SHA-256 "
                            f"(first missing or different: {missing})", retryable=False)


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
