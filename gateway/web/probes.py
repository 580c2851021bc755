"""What a load balancer asks each process of a center: ``/api/health`` and ``/api/ready``.

``GET /api/health``
    200 while this process answers HTTP at all (it touches nothing else): a
    process that fails it is hung or gone, and is restarted.
``GET /api/ready``
    200 when this process can take work now: its store's index answers a
    query, its blob folder is writable (or its bucket answers), its DICOM
    listener is up and it is not shutting down; otherwise 503 naming what is
    not ready.  On SIGTERM it turns 503 at once, while the process still
    finishes what it holds, so the balancer (HAProxy's ``option httpchk GET
    /api/ready``) stops sending it new work first.

Both answer without a token (a balancer has none) and carry no secret: the
node's name and role, and for a failing check its name and the exception's
type, never its text (a database error can quote a connection URL).  The
detail goes to the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field

from aiohttp import web

from fenji.gateway.config import READY_PROBE_TIMEOUT_S
from fenji.gateway.store.blobs import LocalBlobs, S3Blobs
from fenji.gateway.store.db import Store
from fenji.gateway.web.common import CONFIG, STORE

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """Set by the node: its DICOM listener is up; it is shutting down."""

    dicom_up: threading.Event = field(default_factory=threading.Event)
    draining: threading.Event = field(default_factory=threading.Event)


READINESS = web.AppKey("fenji_readiness", Readiness)


def store_problems(store: Store) -> list[str]:
    """What keeps the store from taking work: the index must answer, the blobs be writable."""
    problems = []
    try:
        store.query("SELECT version FROM schema_migrations LIMIT 1")
    except Exception as exc:  # any failure of any backend is "not ready"; detail logged
        log.warning("ready: index not reachable: %s", exc)
        problems.append(f"index not reachable ({type(exc).__name__})")
    blobs = store.blobs
    if isinstance(blobs, S3Blobs):
        try:
            blobs.check()  # HEAD bucket
        except Exception as exc:  # as above: any failure is "not ready", detail logged
            log.warning("ready: bucket not reachable: %s", exc)
            problems.append(f"blob bucket not reachable ({type(exc).__name__})")
    elif isinstance(blobs, LocalBlobs) and not (
            blobs.folder.is_dir() and os.access(blobs.folder, os.W_OK | os.X_OK)):
        log.warning("ready: blob folder %s is not a writable folder", blobs.folder)
        problems.append("blob folder not writable")
    return problems


async def health(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    return web.json_response({"status": "alive", "name": cfg.node.name, "role": cfg.node.role},
                             headers={"Cache-Control": "no-store"})


async def ready(request: web.Request) -> web.Response:
    cfg, store, state = request.app[CONFIG], request.app[STORE], request.app[READINESS]
    problems: list[str] = []
    if state.draining.is_set():
        problems.append("shutting down")
    else:
        if not state.dicom_up.is_set():
            problems.append("DICOM listener not up")
        try:
            problems += await asyncio.wait_for(asyncio.to_thread(store_problems, store),
                                               READY_PROBE_TIMEOUT_S)
        except TimeoutError:
            problems.append(f"store did not answer within {READY_PROBE_TIMEOUT_S:g} s")
    body = {"status": "not_ready" if problems else "ready", "name": cfg.node.name,
            "role": cfg.node.role, "problems": problems}
    return web.json_response(body, status=503 if problems else 200,
                             headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application, readiness: Readiness) -> None:
    app[READINESS] = readiness
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/ready", ready)
