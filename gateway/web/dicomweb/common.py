"""What every DICOMweb route shares.

Constants, error answers, the instances of a study, the audit of a read, streaming a blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from fenji.gateway.access.users import User
from fenji.gateway.audit import ledger
from fenji.gateway.config import AUDIT_QUERY_STUDIES_MAX, DICOMWEB_READ_CHUNK_BYTES, Config
from fenji.gateway.dicom import query as qr
from fenji.gateway.store.db import Store
from fenji.gateway.web.common import app_of

log = logging.getLogger(__name__)

PREFIX = "/dicom-web"
DICOM_JSON = "application/dicom+json"
CHUNK_BYTES = DICOMWEB_READ_CHUNK_BYTES  # gateway/config.py
BULK_THRESHOLD_BYTES = 1024  # larger binary values become BulkDataURI in metadata
MAX_QUERY_STUDIES_IN_AUDIT = AUDIT_QUERY_STUDIES_MAX  # gateway/config.py

_PRIVATE_KEYS = {"sha256", "transfer_syntax_uid", "size"}
_RESERVED_PARAMS = {"limit", "offset", "fuzzymatching", "includefield", "orderby"}


def _error(status: int, err: str, message: str) -> web.Response:
    return web.json_response({"status": status, "error": err, "message": message},
                             status=status)


def _dicom_json(body: Any, status: int = 200) -> web.Response:
    # Exactly "application/dicom+json": clients compare the whole header
    # (dicomweb-client ignores a body labelled "...; charset=utf-8").
    import json

    return web.Response(body=json.dumps(body).encode("utf-8"), status=status,
                        headers={"Content-Type": DICOM_JSON})


def _base_url(request: web.Request) -> str:
    """Absolute URL of ``/dicom-web`` as the client reached it (RetrieveURL, BulkDataURI)."""
    host = request.host
    if ":" not in host.rpartition("]")[2] and request.transport is not None:
        # Some clients (dicomweb-client) send Host without the port: add the
        # socket's, else the URIs we hand out would point at port 80.
        sock = request.transport.get_extra_info("sockname")
        default = 443 if request.scheme == "https" else 80
        if sock and int(sock[1]) != default:
            host = f"{host}:{sock[1]}"
    return f"{request.scheme}://{host}{PREFIX}"


def _instances(store: Store, study: str, series: str | None = None,
               sop: str | None = None) -> list[dict[str, Any]]:
    sql = ("SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid, "
           "transfer_syntax_uid, sha256, size, instance_number, specific_character_set, "
           "charset_source FROM instances WHERE study_instance_uid = ?")
    args: list[Any] = [study]
    if series is not None:
        sql += " AND series_instance_uid = ?"
        args.append(series)
    if sop is not None:
        sql += " AND sop_instance_uid = ?"
        args.append(sop)
    sql += " ORDER BY series_instance_uid, instance_number, sop_instance_uid"
    return store.query(sql, tuple(args))


def _audit_open(store: Store, cfg: Config, user: User, studies: list[str], via: str,
                request: web.Request, **extra: Any) -> None:
    """One ``opened`` event per request (DESIGN.md §11: every access to patient data).

    The event names what was read by its UIDs (the path, the studies) and a
    query by its keys only: the values (``PatientName=…``) are patient data,
    and the ledger travels with the case to other nodes (issue 17, finding 8).
    """
    if not studies:
        return
    obj = studies[0] if len(studies) == 1 else f"{len(studies)} studies"
    case_id = qr.case_for_study(store, studies[0]) if len(studies) == 1 else None
    detail: dict[str, Any] = {"via": via, "from": request.remote, "path": request.path}
    if request.query:
        detail["query_keys"] = sorted(set(request.query.keys()))[:50]
    if len(studies) > 1:
        detail["studies"] = studies[:MAX_QUERY_STUDIES_IN_AUDIT]
    detail.update(extra)
    ledger.record(store, "opened", node=cfg.node.name, actor=user.name, role=user.role,
                  obj=obj, case_id=case_id, detail=detail)


def _not_found_if_empty(rows: list[dict[str, Any]], what: str) -> None:
    if not rows:
        raise web.HTTPNotFound(text=f"{what} not found")


def _what(m: dict[str, str]) -> str:
    if "sop" in m:
        return f"instance {m['sop']}"
    if "series" in m:
        return f"series {m['series']} of study {m['study']}"
    return f"study {m['study']}"


# -- WADO-RS: retrieve --------------------------------------------------------
async def _blob_chunks(store: Store, sha256: str, offset: int, length: int
                       ) -> AsyncIterator[bytes]:
    """``length`` bytes of a blob from ``offset`` in CHUNK_BYTES pieces, the next read
    overlapping the current write: one file read each, or on S3 a piece of a
    ranged GET (gateway/store/blobs.py).  Memory: two pieces, whatever the blob."""
    it = store.blob_chunks(sha256, offset, length, CHUNK_BYTES)
    nxt: asyncio.Future[bytes | None] = asyncio.ensure_future(
        asyncio.to_thread(next, it, None))
    try:
        while (cur := await nxt) is not None:
            nxt = asyncio.ensure_future(asyncio.to_thread(next, it, None))
            yield cur
    finally:
        # A client gone mid-stream: let the read in flight end, then release the
        # file (or the HTTP connection to the bucket).
        with contextlib.suppress(Exception):
            await nxt
        close = getattr(it, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


def _part_head(boundary: str, ctype: str, location: str | None = None) -> bytes:
    head = f"--{boundary}\r\nContent-Type: {ctype}\r\n"
    if location:
        head += f"Content-Location: {location}\r\n"
    return (head + "\r\n").encode("ascii")


_app = app_of
