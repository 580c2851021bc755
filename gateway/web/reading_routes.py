"""HTTP routes of the reading center and of report return (DESIGN.md §3 steps 8-9).

* ``GET  /api/worklist`` — the worklist (readers see their services), STAT first;
* ``POST /api/worklist/{case}/claim``, ``DELETE`` the same — claim / give back;
* ``POST /api/cases/{case}/reports`` — sign a report (JSON ``findings``,
  ``impression``, ``critical``; ``amendment_reason`` for an amendment), or the
  reader's viewer posts its own SR or encapsulated PDF (``application/dicom``;
  ``?critical=true``, ``?amendment_reason=...``);
* ``GET  /api/cases/{case}/reports`` — every version;
* ``POST /api/cases/{case}/ack`` — the requesting physician acknowledges;
* ``POST /api/cases/{case}/override`` — release a held case with a reason.

Roles are checked in each handler (:func:`fenji.gateway.access.users.require`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from fenji.gateway.access import scope as access
from fenji.gateway.access.users import require
from fenji.gateway.reading import claims, report_return, viewer
from fenji.gateway.web.common import ON_RELEASE, WAKE, app_of, json_body

# This module's routes (aiohttp's RouteTableDef): each handler names its own.
ROUTES = web.RouteTableDef()

_app = app_of
_json = json_body


@ROUTES.get("/api/worklist")
async def get_worklist(request: web.Request) -> web.Response:
    cfg, store = _app(request)
    user = require(request, "reader", "operator", action="see the worklist")
    rows = await asyncio.to_thread(claims.worklist, store, cfg, user=user,
                                   state=request.query.get("state"))
    return web.json_response(rows)


@ROUTES.post("/api/worklist/{case_id}/claim")
async def post_claim(request: web.Request) -> web.Response:
    cfg, store = _app(request)
    user = require(request, "reader", action="claim cases")
    out = await asyncio.to_thread(claims.claim, store, cfg, request.match_info["case_id"], user)
    return web.json_response(out)


@ROUTES.delete("/api/worklist/{case_id}/claim")
async def delete_claim(request: web.Request) -> web.Response:
    cfg, store = _app(request)
    user = require(request, "reader", action="give back claims")
    await asyncio.to_thread(claims.unclaim, store, cfg, request.match_info["case_id"], user)
    return web.json_response({"case_id": request.match_info["case_id"], "state": "new"})


@ROUTES.post("/api/cases/{case_id}/reports")
async def post_report(request: web.Request) -> web.Response:
    cfg, store = _app(request)
    user = require(request, "reader", action="sign reports")
    if request.content_type == "application/dicom":  # an SR or PDF from the reader's viewer
        data = await request.read()
        row = await asyncio.to_thread(
            viewer.report_from_viewer, store, cfg, user, data, request.match_info["case_id"],
            critical=request.query.get("critical", "").lower() == "true",
            amendment_reason=request.query.get("amendment_reason"),
            passphrase=_passphrase(request.headers.get("Fenji-Key-Passphrase")))
        return _report_response(request, row)
    body = await _json(request)
    critical = body.get("critical", False)
    if not isinstance(critical, bool):
        raise web.HTTPBadRequest(text=f"critical = {critical!r} is not true or false")
    row = await asyncio.to_thread(
        report_return.submit_report, store, cfg, request.match_info["case_id"], user,
        findings=str(body.get("findings") or ""), impression=str(body.get("impression") or ""),
        critical=critical, amendment_reason=body.get("amendment_reason"),
        passphrase=_passphrase(body.get("passphrase")))
    return _report_response(request, row)


def _passphrase(value: object) -> bytes | None:
    """The reader's key passphrase from a sign request (never logged, never stored)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise web.HTTPBadRequest(text="passphrase must be a string")
    return value.encode()


@ROUTES.get("/api/cases/{case_id}/drafts")
async def get_drafts(request: web.Request) -> web.Response:
    cfg, store = _app(request)
    require(request, "reader", "operator", action="see report drafts")
    rows = await asyncio.to_thread(viewer.drafts_of, store, request.match_info["case_id"])
    return web.json_response(rows)


@ROUTES.post("/api/cases/{case_id}/drafts/{sop}/confirm")
async def post_confirm_draft(request: web.Request) -> web.Response:
    """The reader signs a draft their workstation sent by DICOM (a person's act)."""
    cfg, store = _app(request)
    user = require(request, "reader", action="sign reports")
    body = await _json(request) if request.can_read_body else {}
    critical = body.get("critical", False)
    if not isinstance(critical, bool):
        raise web.HTTPBadRequest(text=f"critical = {critical!r} is not true or false")
    row = await asyncio.to_thread(viewer.confirm_draft, store, cfg,
                                  request.match_info["case_id"], request.match_info["sop"],
                                  user, critical=critical,
                                  passphrase=_passphrase(body.get("passphrase")))
    return _report_response(request, row)


def _report_response(request: web.Request, row: dict[str, Any]) -> web.Response:
    wake = request.app.get(WAKE)
    if callable(wake):
        wake()
    return web.json_response({k: row[k] for k in ("report_id", "case_id", "version", "status",
                                                  "reader", "signed_at", "critical",
                                                  "supersedes", "bundle_id",
                                                  "sr_sop_instance_uid",
                                                  "pdf_sop_instance_uid")}, status=201)


@ROUTES.get("/api/cases/{case_id}/reports")
async def get_reports(request: web.Request) -> web.Response:
    cfg, store = _app(request)
    user = require(request, "technician", "reader", "physician", "operator",
                   action="read reports")
    case = await asyncio.to_thread(store.query_one, "SELECT case_id, service FROM cases "
                                   "WHERE case_id = ?", (request.match_info["case_id"],))
    if case is not None:
        access.check_case(user, case)
    rows = await asyncio.to_thread(report_return.reports_of, store, request.match_info["case_id"])
    return web.json_response(rows)


@ROUTES.get("/api/cases/{case_id}/reports/{version:\\d+}.pdf")
async def get_report_pdf(request: web.Request) -> web.Response:
    """The report PDF (version ``n``) as the requesting physician prints it."""
    cfg, store = _app(request)
    require(request, "technician", "reader", "physician", "operator", action="read reports")
    case_id = request.match_info["case_id"]
    data = await asyncio.to_thread(report_return.report_pdf, store, case_id,
                                   int(request.match_info["version"]))
    return web.Response(body=data, content_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="report-{case_id[:12]}-'
                               f'v{request.match_info["version"]}.pdf"'})


@ROUTES.post("/api/cases/{case_id}/ack")
async def post_ack(request: web.Request) -> web.Response:
    cfg, store = _app(request)
    user = require(request, "physician", "technician", "operator",
                   action="acknowledge reports")
    out = await asyncio.to_thread(report_return.acknowledge, store, cfg,
                                  request.match_info["case_id"], user)
    return web.json_response(out)


def _fields(body: dict[str, Any], *names: str, doing: str) -> list[str]:
    """The named fields of a JSON body, stripped; 400 naming every missing one."""
    values = [str(body.get(n) or "").strip() for n in names]
    missing = [n for n, v in zip(names, values, strict=True) if not v]
    if missing:
        raise web.HTTPBadRequest(text=f"{doing} needs {' and '.join(missing)}")
    return values


@ROUTES.post("/api/cases/{case_id}/exclude")
async def post_exclude(request: web.Request) -> web.Response:
    """Drop one instance of a held case: ``{"sop_instance_uid": ..., "reason": ...}``."""
    from fenji.gateway.cases import case as cases_mod

    cfg, store = _app(request)
    user = require(request, "technician", "operator", action="exclude an instance from a case")
    body = await _json(request)
    reason, sop = _fields(body, "reason", "sop_instance_uid", doing="excluding an instance")
    out = await asyncio.to_thread(cases_mod.exclude_instance, store, request.match_info["case_id"],
                                  sop, operator=user.name, reason=reason, node=cfg.node.name)
    return web.json_response(out)


@ROUTES.post("/api/cases/{case_id}/override")
async def post_override(request: web.Request) -> web.Response:
    from fenji.gateway.cases import case as cases_mod
    from fenji.gateway.keys import load_private

    cfg, store = _app(request)
    user = require(request, "technician", "operator", action="override a quality hold")
    (reason,) = _fields(await _json(request), "reason", doing="an override")
    key = await asyncio.to_thread(load_private, cfg.resolve(cfg.keys.private_key))
    case_id = request.match_info["case_id"]
    case = await asyncio.to_thread(store.query_one, "SELECT destination FROM cases WHERE "
                                   "case_id = ?", (case_id,))
    rel = await asyncio.to_thread(cases_mod.override, store, case_id, operator=user.name,
                                  reason=reason, gate_key=key, sender_node=cfg.node.name,
                                  operator_role=user.role,
                                  hop=cases_mod.next_hop(cfg, case["destination"])
                                  if case else None)
    hook = request.app.get(ON_RELEASE)
    if callable(hook):
        await asyncio.to_thread(hook, rel)
    return web.json_response({"case_id": rel.case_id, "bundle_id": rel.bundle_id,
                              "state": "released", "operator": user.name}, status=201)




def add_routes(app: web.Application, wake: Any = None) -> None:
    if wake is not None:
        app[WAKE] = wake
    app.add_routes(ROUTES)
