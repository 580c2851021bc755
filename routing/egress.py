"""Handing received cases on to non-fenji archives (DESIGN.md §3 step 8).

A center queues every received case once per configured ``[[egress]]``
archive, through the same outbox (same retries, backoff, breaker, dead
letter).  Three kinds:

* ``orthanc`` — Orthanc's REST API via orthanc-rest-client (``POST /instances``);
* ``dimse`` — C-STORE to any DICOM SCP (pynetdicom SCU), each instance in its
  own transfer syntax, bytes as stored;
* ``stow`` — DICOMweb STOW-RS (``POST {url}/studies``, multipart/related).

Each instance is sent as the exact bytes fenji stored; archives treat a
re-sent instance as already stored, so a retried job is harmless.  A job
completes only when every instance was accepted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import socket
import uuid
from typing import Any

from fenji.gateway.config import Config, EgressSection
from fenji.gateway.errors import PeerError
from fenji.gateway.ingest import split_part10
from fenji.gateway.store.db import Store

log = logging.getLogger(__name__)


class EgressError(PeerError):
    """The local PACS/HIS refused or could not be reached; ``retryable`` says whether to retry."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable



def install_nodelay() -> None:
    """TCP_NODELAY on the associations pynetdicom opens (C-MOVE sub-associations,
    egress): with Nagle on, every C-STORE waits ~40 ms for the peer's delayed ACK."""
    from pynetdicom.transport import AssociationSocket

    if getattr(AssociationSocket, "_fenji_nodelay", False):
        return
    original = AssociationSocket._create_socket

    def create(self: Any, address: Any) -> socket.socket:
        sock = original(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    AssociationSocket._create_socket = create  # type: ignore[method-assign]
    AssociationSocket._fenji_nodelay = True  # type: ignore[attr-defined]


def job_bundle_id(target: str, case_id: str) -> str:
    """The outbox key of "case X to archive Y" (the protocol's 64-char id alphabet)."""
    return "eg" + hashlib.sha256(f"{target}\0{case_id}".encode()).hexdigest()[:40]


def enqueue_case(cfg: Config, store: Store, case_id: str, priority: int, now: float) -> int:
    from fenji.routing import outbox_db

    n = 0
    size = store.query_one(
        "SELECT coalesce(sum(i.size), 0) AS b FROM case_instances ci JOIN instances i "
        "ON i.sop_instance_uid = ci.sop_instance_uid WHERE ci.case_id = ?", (case_id,))
    for eg in cfg.egress:
        outbox_db.enqueue(store, job_bundle_id(eg.name, case_id), case_id, eg.name, priority,
                          int(size["b"]) if size else 0, now)
        n += 1
    return n


def case_blobs(store: Store, case_id: str) -> list[tuple[str, bytes]]:
    rows = store.query("SELECT i.sop_instance_uid, i.sha256 FROM case_instances ci JOIN "
                       "instances i ON i.sop_instance_uid = ci.sop_instance_uid WHERE "
                       "ci.case_id = ? ORDER BY i.instance_number, i.sop_instance_uid",
                       (case_id,))
    return [(r["sop_instance_uid"], store.read_blob(r["sha256"])) for r in rows]


def send_case(cfg: Config, store: Store, target: EgressSection, case_id: str) -> int:
    """Send every instance of ``case_id`` to ``target``; return the count (blocking)."""
    blobs = case_blobs(store, case_id)
    if not blobs:
        raise EgressError(f"case {case_id} has no instances at this node", retryable=False)
    if target.kind == "orthanc":
        _orthanc(target, blobs)
    elif target.kind == "dimse":
        _dimse(cfg, target, blobs)
    elif target.kind == "stow":
        _stow(target, blobs)
    else:
        raise EgressError(f"unknown egress kind {target.kind!r}", retryable=False)
    return len(blobs)


def _orthanc(target: EgressSection, blobs: list[tuple[str, bytes]]) -> None:
    import requests
    from orthanc_rest_client import Orthanc

    client = Orthanc(target.url.rstrip("/"), warn_insecure=False)
    for uid, data in blobs:
        try:
            resp = client.add_instance(data)
        except requests.RequestException as exc:
            raise EgressError(f"Orthanc {target.url}: {exc}") from exc
        status = resp.get("Status") if isinstance(resp, dict) else None
        if status not in ("Success", "AlreadyStored"):
            raise EgressError(f"Orthanc refused {uid}: {resp!r}"[:300])


def _dimse(cfg: Config, target: EgressSection, blobs: list[tuple[str, bytes]]) -> None:
    from pydicom import dcmread
    from pynetdicom import AE


    install_nodelay()

    ae = AE(ae_title=cfg.dicom.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    contexts = set()
    for _, data in blobs:
        meta, _ = split_part10(data)
        contexts.add((meta["MediaStorageSOPClassUID"], meta["TransferSyntaxUID"]))
    for sop_class, ts in sorted(contexts)[:128]:
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
    if not assoc.is_established:
        raise EgressError(f"association with {target.ae_title}@{target.host}:{target.port} "
                          "rejected or unreachable")
    try:
        for uid, data in blobs:
            ds = dcmread(io.BytesIO(data))
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else None
            if code is None or not (code == 0 or 0xB000 <= code <= 0xBFFF):
                raise EgressError(f"C-STORE of {uid} to {target.ae_title}: status "
                                  f"{'none' if code is None else hex(code)}")
    finally:
        assoc.release()


def _stow(target: EgressSection, blobs: list[tuple[str, bytes]]) -> None:
    import requests

    boundary = uuid.uuid4().hex
    parts = [b"".join((f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                       data, b"\r\n")) for _, data in blobs]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; '
                               f"boundary={boundary}", "Accept": "application/dicom+json"}
    try:
        r = requests.post(target.url.rstrip("/") + "/studies", data=body, headers=headers,
                          timeout=300)
    except requests.RequestException as exc:
        raise EgressError(f"STOW-RS {target.url}: {exc}") from exc
    if r.status_code not in (200, 202):
        raise EgressError(f"STOW-RS {target.url}: HTTP {r.status_code} {r.text[:200]}",
                          retryable=r.status_code >= 500 or r.status_code == 429)


def describe(target: Any) -> str:
    return f"{target.kind}:{target.url or f'{target.ae_title}@{target.host}:{target.port}'}"
