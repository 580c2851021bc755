"""The node's local API: `fenji` commands on this machine hand work to the running node.

Served on a UNIX socket (gateway/access/local.py says who may connect and
how); one route so far:

* ``POST /cases/release`` — `fenji case send`: release a study as the CLI
  would, in this process, whose codecs are loaded (an urgent ECG's release took
  ~1 s longer in a fresh command).  JSON body: ``study_instance_uid``,
  ``destination`` (default: transfer.default_destination), ``priority``,
  ``service``, ``requesting_physician``, ``clinical_question``, ``consent_ref``,
  ``effort``, ``operator``, ``gate`` (false: no quality gate).  Answers 201 with
  the case (the CLI's JSON), 409 ``held`` with the gate's reasons, or a JSON
  error naming the field.  The release is recorded as ``released_by = cli``:
  it is the command's, only the work moved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from fenji.gateway.access import local as access_local
from fenji.gateway.cases import case as cases_mod
from fenji.gateway.config import (
    LOCAL_API_MAX_BODY_BYTES,
    LOCAL_API_MAX_CONCURRENT,
    Config,
)
from fenji.gateway.errors import FenjiError
from fenji.gateway.keys import load_private
from fenji.gateway.store.db import Store

log = logging.getLogger(__name__)

_TEXT_FIELDS = ("destination", "priority", "service", "requesting_physician",
                "clinical_question", "consent_ref", "effort", "operator")


def _error(status: int, err: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"status": status, "error": err, "message": message, **extra},
                             status=status)


def build_local_app(live: Callable[[], Config], store: Store,
                    wake: Callable[[], None]) -> web.Application:
    """``live()``: the node's config as it is now (`fenji peer add` changes its peers and
    default destination without a restart)."""
    slots = asyncio.Semaphore(LOCAL_API_MAX_CONCURRENT)

    @web.middleware
    async def only_the_node_user(request: web.Request, handler: Any) -> web.StreamResponse:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        try:
            uid = access_local.peer_uid(sock) if sock is not None else -1
        except OSError:
            uid = -1
        if not access_local.allowed(uid):
            log.warning("local API refused uid=%d %s %s", uid, request.method, request.path)
            return _error(403, "forbidden", f"uid {uid} is not the node's user")
        if slots.locked():
            return _error(429, "busy", f"{LOCAL_API_MAX_CONCURRENT} local requests are "
                                       "running; try again")
        async with slots:
            try:
                return await handler(request)
            except FenjiError as exc:
                return _error(exc.http_status, type(exc).__name__, str(exc))

    async def release(request: web.Request) -> web.Response:
        cfg = live()
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "bad_json", "request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("study_instance_uid"), str):
            return _error(400, "missing_study", "study_instance_uid (a string) is required")
        for name in _TEXT_FIELDS:
            if body.get(name) is not None and not isinstance(body[name], str):
                return _error(400, "bad_field", f"{name} = {body[name]!r} is not a string")
        dest = body.get("destination") or cfg.transfer.default_destination
        if not dest:
            return _error(400, "no_destination",
                          "no destination and no transfer.default_destination in the config")
        hop = cases_mod.next_hop(cfg, dest)
        if hop is None:
            return _error(400, "unknown_destination",
                          f"destination {dest!r} is not a configured peer and "
                          "transfer.default_destination does not lead to it")
        key = None
        if body.get("gate", True):
            key = await asyncio.to_thread(load_private, cfg.resolve(cfg.keys.private_key))
        try:
            rel = await asyncio.to_thread(
                cases_mod.release, store, body["study_instance_uid"], destination=dest,
                priority=body.get("priority") or "routine", service=body.get("service"),
                requesting_physician=body.get("requesting_physician"),
                clinical_question=body.get("clinical_question"),
                consent_ref=body.get("consent_ref"), released_by="cli",
                sender_node=cfg.node.name, effort=body.get("effort") or "fast",
                gate_key=key, operator=body.get("operator") or "",
                thresholds=(cfg.quality_ecg, cfg.quality_image), hop=hop)
        except cases_mod.CaseHeld as held:
            return _error(409, "held", str(held), case_id=held.case_id, reasons=held.reasons)
        wake()  # queued by the release's commit: this process's sender goes at once
        return web.json_response({
            "case_id": rel.case_id, "kind": rel.kind, "parent_case_id": rel.parent_case_id,
            "bundle_id": rel.bundle_id, "destination": dest, "next_hop": hop,
            "priority": rel.priority, "instances": rel.instances, "raw_bytes": rel.raw_bytes,
            "bundle_bytes": rel.bundle_bytes}, status=201)

    app = web.Application(middlewares=[only_the_node_user],
                          client_max_size=LOCAL_API_MAX_BODY_BYTES)
    app.router.add_post("/cases/release", release)
    return app
