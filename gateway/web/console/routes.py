"""The console's pages and forms (issue 13).

Every page and form checks the user's role with the API's own
:func:`fenji.gateway.access.users.require` and the same role lists as the JSON
route doing the same thing (``reading_routes``, ``app``), and then calls the
same core function (:mod:`fenji.gateway.reading`,
:mod:`fenji.gateway.cases.case`).  What a reader may read is
:mod:`fenji.gateway.access.scope`'s rule, applied in those functions or here
exactly where the API applies it.  Forms are checked for CSRF first (csrf.py).

Anonymous requests are sent to ``/login``; a signed-in user without the role
gets 403 with the API's reason, as an HTML page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web

from fenji.gateway import reading
from fenji.gateway.access import scope as access
from fenji.gateway.access.users import User, authenticate, hash_token, require
from fenji.gateway.audit import ledger
from fenji.gateway.audit import stats as stats_mod
from fenji.gateway.cases import case as cases_mod
from fenji.gateway.config import Config
from fenji.gateway.dicom.charset import pn_display
from fenji.gateway.errors import FenjiError
from fenji.gateway.store.db import Store
from fenji.gateway.web.common import LIVE_CONFIG, ON_RELEASE, WAKE, app_of
from fenji.gateway.web.console import csrf, i18n, svg
from fenji.gateway.web.console.session import (
    SESSIONS,
    cookie_name,
    secure,
    session_of,
    sessions_of,
    set_cookie,
)
from fenji.gateway.web.console.viewer import VIEWER_DIR

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
HOME = {"technician": "/console/technician", "reader": "/console/reader",
        "physician": "/console/physician", "operator": "/console/operator"}
Handler = Callable[[web.Request, User], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------------------
# Rendering and the page/form wrappers
# ---------------------------------------------------------------------------

def _ctx(request: web.Request, **kw: Any) -> dict[str, Any]:
    lang = i18n.choose(request)
    user = request.get("user")
    return {"lang": lang, "t": i18n.words(lang), "other_lang": i18n.other(lang),
            "user": user if isinstance(user, User) else None, "csrf": csrf.token_for(request),
            "path": request.path, "home": HOME, "pn": pn_display, "now": time.time(),
            "ago": _ago, "clock": _clock, "ts": _ts,
            "mb": lambda b: f"{(b or 0) / 1e6:.2f} MB", **kw}


def _render(request: web.Request, template: str, status: int = 200,
            **kw: Any) -> web.Response:
    resp = aiohttp_jinja2.render_template(template, request, _ctx(request, **kw),
                                          status=status)
    if "lang" in request.query and request.query["lang"] in i18n.LANGS:
        resp.set_cookie(i18n.COOKIE, request.query["lang"], samesite="Strict", path="/",
                        max_age=365 * 86400)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                               "style-src 'self' 'unsafe-inline'; "
                                               "frame-ancestors 'self'; object-src 'self'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    return _render(request, "error.html", status=status, status_code=status, message=message)


def _anonymous(request: web.Request) -> web.Response:
    if request.method == "GET":
        raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs)}")
    raise web.HTTPSeeOther("/login")


async def _guard(request: web.Request, run: Callable[[], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    try:
        return await run()
    except web.HTTPException as exc:
        if exc.status in (401, 403, 400, 404, 409, 413, 422) and not isinstance(
                exc, web.HTTPRedirection):
            return _error_page(request, exc.status, exc.text or exc.reason)
        raise
    except FenjiError as exc:
        return _error_page(request, exc.http_status, str(exc))


Wrapped = Callable[[web.Request], Awaitable[Any]]


def _console(roles: tuple[str, ...], action: str, *,
             with_form: bool) -> Callable[[Handler], Wrapped]:
    """Signed-in people only (else to the sign-in page); for a form, its CSRF
    token first; then the role, then the work, errors shown as a page."""
    def deco(fn: Handler) -> Wrapped:
        async def handler(request: web.Request) -> web.StreamResponse:
            if not isinstance(request.get("user"), User):
                return _anonymous(request)

            async def run() -> web.StreamResponse:
                if with_form:
                    fields = {k: str(v) for k, v in (await request.post()).items()}
                    request["form"] = fields
                    csrf.check(request, fields)
                return await fn(request, require(request, *roles, action=action))
            return await _guard(request, run)
        return handler
    return deco


def page(*roles: str, action: str) -> Callable[[Handler], Wrapped]:
    """A GET page for ``roles`` (the API's list for the same data)."""
    return _console(roles, action, with_form=False)


def form(*roles: str, action: str) -> Callable[[Handler], Wrapped]:
    """A form POST: CSRF first, then the role, then the work; redirects back on success."""
    return _console(roles, action, with_form=True)


def _back(request: web.Request, default: str) -> web.HTTPSeeOther:
    nxt = request.get("form", {}).get("next", "")
    return web.HTTPSeeOther(nxt if nxt.startswith("/console/") else default)


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    return _clock(time.time() - float(ts))


def _ts(t: Any) -> str:
    """Epoch seconds as the node's local time, for people."""
    if t in (None, ""):
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(_when(t)))
    except (FenjiError, ValueError, OverflowError):
        return str(t)


def _when(t: Any) -> float:
    """A report's time (ISO text in the signed document, or epoch seconds) as seconds."""
    return float(t) if isinstance(t, int | float) else stats_mod.parse_time(str(t))


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


# ---------------------------------------------------------------------------
# Sign-in
# ---------------------------------------------------------------------------

async def get_login(request: web.Request) -> web.Response:
    # Keep the cookie's token if there is one: two tabs (or a reload) on /login
    # must not invalidate each other's form.
    token = request.cookies.get(csrf.LOGIN_COOKIE) or csrf.login_token()
    resp = _render(request, "login.html", login_csrf=token,
                   next=request.query.get("next", ""), failed=False)
    resp.set_cookie(csrf.LOGIN_COOKIE, token, httponly=True, samesite="Strict",
                    path="/login", max_age=3600,
                    secure=secure(request, request.app[LIVE_CONFIG][0]))
    return resp


async def post_login(request: web.Request) -> web.StreamResponse:
    fields = {k: str(v) for k, v in (await request.post()).items()}
    try:
        csrf.check_login(request, fields)
    except csrf.CsrfRefused as exc:
        return _error_page(request, 403, exc.text or "CSRF")
    cfg = request.app[LIVE_CONFIG][0]
    token = fields.get("token", "").strip()
    user = authenticate(cfg, token)
    if user is None:
        log.info("console sign-in refused peer=%s", request.remote)
        again = request.cookies.get(csrf.LOGIN_COOKIE) or csrf.login_token()
        resp = _render(request, "login.html", status=401, login_csrf=again,
                       next=fields.get("next", ""), failed=True)
        resp.set_cookie(csrf.LOGIN_COOKIE, again, httponly=True, samesite="Strict",
                        path="/login", max_age=3600, secure=secure(request, cfg))
        return resp
    old = request.cookies.get(cookie_name(cfg))
    sessions = request.app[SESSIONS]
    await asyncio.to_thread(sessions.end, old)  # a new id at every sign-in (no fixation)
    s = await asyncio.to_thread(sessions.start, user.name, hash_token(token))
    log.info("console sign-in user=%s role=%s peer=%s", user.name, user.role, request.remote)
    nxt = fields.get("next", "")
    target = nxt if nxt.startswith(("/console/", "/viewer")) else HOME.get(user.role, "/")
    resp = web.HTTPSeeOther(target)
    set_cookie(request, resp, s, cfg)
    resp.del_cookie(csrf.LOGIN_COOKIE, path="/login", secure=secure(request, cfg))
    raise resp


async def post_logout(request: web.Request) -> web.StreamResponse:
    fields = {k: str(v) for k, v in (await request.post()).items()}
    s = session_of(request)
    if s is not None:
        try:
            csrf.check(request, fields)
        except csrf.CsrfRefused as exc:
            return _error_page(request, 403, exc.text or "CSRF")
        await asyncio.to_thread(request.app[SESSIONS].end, s.sid)
        log.info("console sign-out user=%s", s.user)
    resp = web.HTTPSeeOther("/login")
    cfg = request.app[LIVE_CONFIG][0]
    resp.del_cookie(cookie_name(cfg), path="/", secure=secure(request, cfg))
    raise resp


async def get_root(request: web.Request) -> web.StreamResponse:
    user = request.get("user")
    if not isinstance(user, User):
        raise web.HTTPSeeOther("/login")
    raise web.HTTPSeeOther(HOME.get(user.role, "/login"))


# ---------------------------------------------------------------------------
# Technician (edge)
# ---------------------------------------------------------------------------

def _arrivals(store: Store) -> list[dict[str, Any]]:
    """Studies received from modalities and carts that are not a case yet."""
    return store.query(
        "SELECT s.study_instance_uid, s.patient_id, s.patient_name, s.study_description, "
        "s.first_received_at, s.last_received_at, "
        "(SELECT count(*) FROM instances i WHERE i.study_instance_uid = s.study_instance_uid)"
        " AS n_instances, (SELECT group_concat(DISTINCT se.modality) FROM series se WHERE "
        "se.study_instance_uid = s.study_instance_uid) AS modalities "
        "FROM studies s WHERE NOT EXISTS (SELECT 1 FROM cases c WHERE "
        "c.study_instance_uid = s.study_instance_uid) AND NOT EXISTS (SELECT 1 FROM instances "
        "i WHERE i.study_instance_uid = s.study_instance_uid AND i.calling_ae LIKE 'node:%') "
        "ORDER BY s.last_received_at DESC LIMIT 200")


def _edge_cases(store: Store, cfg: Config) -> list[dict[str, Any]]:
    rows = store.query(
        "SELECT c.*, st.patient_name, st.patient_id, st.study_description, "
        "(SELECT group_concat(DISTINCT se.modality) FROM series se WHERE "
        "se.study_instance_uid = c.study_instance_uid) AS modalities "
        "FROM cases c LEFT JOIN studies st ON st.study_instance_uid = c.study_instance_uid "
        "WHERE c.kind = 'case' ORDER BY c.created_at DESC LIMIT 200")
    jobs: dict[str, dict[str, Any]] = {}
    for job in store.query("SELECT * FROM outbox ORDER BY job_id"):
        jobs[job["case_id"]] = job
    links = {d["name"]: d for d in store.query("SELECT * FROM destinations")}
    now = time.time()
    for r in rows:
        q = cases_mod.quality_of(store, r["case_id"])
        r["quality"] = q
        r["reasons"] = _reasons(q)
        j: dict[str, Any] | None = jobs.get(r["case_id"])
        r["job"] = j
        r["link"] = {}
        if j is not None:
            link: dict[str, Any] = links.get(j["destination"]) or {}
            r["link"] = link
            rate = float(link.get("throughput_bps") or 0) / 8 if link else 0.0
            left = max(0, int(j["bytes_total"]) - int(j["bytes_sent"]))
            r["eta_s"] = (left / rate) if rate > 0 and j["state"] not in ("done", "dead") \
                else None
            r["age_s"] = now - float(j["created_at"])
        r["preview_at_center"] = bool(store.query_one(
            "SELECT 1 FROM receipts WHERE case_id = ? LIMIT 1", (r["case_id"],)))
    return rows


def _reasons(q: dict[str, Any] | None) -> list[str]:
    """The gate's reasons in words, as the technician reads them."""
    if not q:
        return []
    rep = q.get("report") or {}
    out: list[str] = []
    for key in ("reasons", "problems", "failures"):
        for item in rep.get(key) or []:
            out.append(item if isinstance(item, str) else str(item.get("reason") or
                                                              item.get("message") or item))
    if not out:
        for inst in rep.get("instances") or []:
            for item in inst.get("reasons") or []:
                out.append(str(item))
    return out[:12]


@page("technician", "operator", action="release cases")
async def get_technician(request: web.Request, user: User) -> web.Response:
    cfg, store = app_of(request)
    arrivals = await asyncio.to_thread(_arrivals, store)
    cases = await asyncio.to_thread(_edge_cases, store, cfg)
    return _render(request, "technician.html", arrivals=arrivals, cases=cases,
                   destinations=[p.name for p in cfg.peers],
                   default_destination=cfg.transfer.default_destination)


def _after_release(request: web.Request, rel: cases_mod.Released) -> None:
    hook = request.app.get(ON_RELEASE)
    if callable(hook):
        hook(rel)


@form("technician", "operator", action="release cases")
async def post_release(request: web.Request, user: User) -> web.StreamResponse:
    """As ``POST /api/cases``: the gate, the signed attestation, the outbox."""
    from fenji.gateway.keys import load_private

    cfg, store = app_of(request)
    f = request["form"]
    study = f.get("study_instance_uid", "").strip()
    if not study:
        raise web.HTTPBadRequest(text="study_instance_uid is required")
    dest = f.get("destination") or cfg.transfer.default_destination
    if not dest or cfg.peer(dest) is None:
        raise web.HTTPBadRequest(text=f"destination {dest!r} is not a configured peer")
    priority = f.get("priority", "routine")
    key = load_private(cfg.resolve(cfg.keys.private_key))
    try:
        rel = await asyncio.to_thread(
            cases_mod.release, store, study, destination=dest, priority=priority,
            service=None, requesting_physician=f.get("requesting_physician") or None,
            clinical_question=f.get("clinical_question") or None,
            # released_by: the console is the API with a face (cases.release names the API).
            consent_ref=f.get("consent_ref") or None, released_by="api",
            sender_node=cfg.node.name, gate_key=key, operator=user.name,
            thresholds=(cfg.quality_ecg, cfg.quality_image),
            hop=cases_mod.next_hop(cfg, dest))  # a STAT preview queued before the encode
    except cases_mod.CaseHeld as held:
        log.info("console release held case=%s user=%s", held.case_id, user.name)
        raise web.HTTPSeeOther(f"/console/technician#case-{held.case_id}") from None
    await asyncio.to_thread(_after_release, request, rel)
    raise web.HTTPSeeOther(f"/console/technician#case-{rel.case_id}")


@form("technician", "operator", action="override a quality hold")
async def post_override(request: web.Request, user: User) -> web.StreamResponse:
    """As ``POST /api/cases/{id}/override``."""
    from fenji.gateway.keys import load_private

    cfg, store = app_of(request)
    reason = request["form"].get("reason", "").strip()
    if not reason:
        raise web.HTTPBadRequest(text="an override needs a reason")
    key = load_private(cfg.resolve(cfg.keys.private_key))
    rel = await asyncio.to_thread(cases_mod.override, store, request.match_info["case_id"],
                                  operator=user.name, reason=reason, gate_key=key,
                                  sender_node=cfg.node.name, operator_role=user.role)
    await asyncio.to_thread(_after_release, request, rel)
    raise _back(request, f"/console/technician#case-{rel.case_id}")


def _study_blobs(store: Store, study: str, limit: int) -> list[bytes]:
    rows = store.query("SELECT sha256 FROM instances WHERE study_instance_uid = ? "
                       "ORDER BY instance_number, sop_instance_uid", (study,))
    if not rows:
        raise web.HTTPNotFound(text=f"no study {study} at this node")
    mid = rows[len(rows) // 2: len(rows) // 2 + limit]
    return [store.read_blob(r["sha256"]) for r in mid]


@page("technician", "reader", "physician", "operator", action="read previews")
async def get_study_thumb(request: web.Request, user: User) -> web.StreamResponse:
    """The key image (middle instance) of a study as a PNG, as a bundle preview makes it."""
    from fenji.codecs.compress.bundle import make_preview
    from fenji.gateway.web.png import encode_png

    _, store = app_of(request)
    study = request.match_info["study"]
    await asyncio.to_thread(access.check_study, store, user, study)
    blob = (await asyncio.to_thread(_study_blobs, store, study, 1))[0]
    pv = await asyncio.to_thread(make_preview, blob, max_side=256)
    if pv is None or pv.kind != "image":
        raise web.HTTPNotFound(text=f"study {study} has no image to preview")
    cap = app_of(request)[0].limits.max_preview_pixels
    png = await asyncio.to_thread(encode_png, pv.array(max_pixels=cap))
    return web.Response(body=png, content_type="image/png",
                        headers={"Cache-Control": "private, max-age=60"})


def _ecg_of(store: Store, study: str) -> tuple[list[str], Any, float, str]:
    import io

    import pydicom

    from fenji.gateway.ecg.io import read_dicom_ecg

    rows = store.query("SELECT sha256 FROM instances WHERE study_instance_uid = ? AND "
                       "sop_class_uid LIKE ? ORDER BY instance_number LIMIT 1",
                       (study, cases_mod.ECG_SOP_PREFIX + "%"))
    for row in rows:  # only waveform objects are read, never a CT's slices
        ds = pydicom.dcmread(io.BytesIO(store.read_blob(row["sha256"])), force=True)
        if "WaveformSequence" in ds:
            rec = read_dicom_ecg(ds)
            name = pn_display(str(getattr(ds, "PatientName", "") or ""))
            return list(rec.leads), rec.physical_mv(), float(rec.fs_hz), name
    raise web.HTTPNotFound(text=f"study {study} has no ECG waveform")


@page("technician", "reader", "physician", "operator", action="read previews")
async def get_ecg_svg(request: web.Request, user: User) -> web.StreamResponse:
    """An ECG on paper as SVG: ``?leads=II`` (a strip) or all leads (12-lead view)."""
    _, store = app_of(request)
    study = request.match_info["study"]
    await asyncio.to_thread(access.check_study, store, user, study)
    leads, mv, fs, name = await asyncio.to_thread(_ecg_of, store, study)
    want = [w for w in request.query.get("leads", "").split(",") if w]
    idx = [i for i, n in enumerate(leads) if not want or n in want] or [0]
    body = await asyncio.to_thread(svg.ecg_svg, [leads[i] for i in idx], mv[:, idx], fs,
                                   title=name)
    return web.Response(text=body, content_type="image/svg+xml",
                        headers={"Cache-Control": "private, max-age=60"})


# ---------------------------------------------------------------------------
# Reader (center)
# ---------------------------------------------------------------------------

@page("reader", "operator", action="see the worklist")
async def get_reader(request: web.Request, user: User) -> web.Response:
    cfg, store = app_of(request)
    rows = await asyncio.to_thread(reading.worklist, store, cfg, user=user)
    return _render(request, "reader.html", rows=rows)


@form("reader", action="claim cases")
async def post_claim(request: web.Request, user: User) -> web.StreamResponse:
    cfg, store = app_of(request)
    case_id = request.match_info["case_id"]
    await asyncio.to_thread(reading.claim, store, cfg, case_id, user)
    raise web.HTTPSeeOther(f"/console/reader/cases/{case_id}")


def _case_view(store: Store, user: User, case_id: str) -> dict[str, Any]:
    case = cases_mod.get_case(store, case_id)
    if case is None:
        raise web.HTTPNotFound(text=f"case {case_id} not found")
    access.check_case(user, case)  # as GET /api/cases/{id}
    case = reading.with_reports(store, case)
    st = store.query_one("SELECT patient_name, patient_id, study_description FROM studies "
                         "WHERE study_instance_uid = ?", (case["study_instance_uid"],)) or {}
    case.update({k: st.get(k) for k in ("patient_name", "patient_id", "study_description")})
    return case


@page("reader", "operator", action="see the worklist")
async def get_reader_case(request: web.Request, user: User) -> web.Response:
    cfg, store = app_of(request)
    case_id = request.match_info["case_id"]
    case = await asyncio.to_thread(_case_view, store, user, case_id)
    rows = await asyncio.to_thread(reading.worklist, store, cfg, user=user)
    item = next((r for r in rows if r["case_id"] == case_id), None)
    signed = [_when(r["signed_at"]) for r in case["reports"] if r.get("signed_at")]
    start = (item or {}).get("received_at") or case.get("created_at")
    tat = (min(signed) - start) if signed and start else None
    return _render(request, "reader_case.html", case=case, item=item, turnaround_s=tat,
                   running_s=(time.time() - start) if start and not signed else None)


@form("reader", action="sign reports")
async def post_report(request: web.Request, user: User) -> web.StreamResponse:
    """As ``POST /api/cases/{id}/reports`` (JSON): the same core function."""
    cfg, store = app_of(request)
    f = request["form"]
    case_id = request.match_info["case_id"]
    await asyncio.to_thread(
        reading.submit_report, store, cfg, case_id, user,
        findings=f.get("findings", ""), impression=f.get("impression", ""),
        critical=f.get("critical") in ("on", "true", "1"),
        amendment_reason=(f.get("amendment_reason") or "").strip() or None,
        passphrase=str(f.get("passphrase") or "").encode() or None)  # the reader's key
    wake = request.app.get(WAKE)
    if callable(wake):
        wake()
    raise web.HTTPSeeOther(f"/console/reader/cases/{case_id}")


@page("technician", "reader", "physician", "operator", action="read cases")
async def get_case_ecg(request: web.Request, user: User) -> web.Response:
    _, store = app_of(request)
    case = await asyncio.to_thread(_case_view, store, user, request.match_info["case_id"])
    return _render(request, "ecg.html", case=case)


# ---------------------------------------------------------------------------
# Requesting physician (edge)
# ---------------------------------------------------------------------------

def _mine(user: User, case: dict[str, Any]) -> bool:
    who = str(case.get("requesting_physician") or "").strip().lower()
    return bool(who) and who in {user.name.lower(), (user.display_name or "").lower()}


def _physician_cases(store: Store, user: User) -> list[dict[str, Any]]:
    out = []
    for c in cases_mod.list_cases(store):
        if c.get("kind", "case") != "case" or (user.role == "physician" and not _mine(user, c)):
            continue
        full = _case_view(store, user, c["case_id"])
        if full["reports"]:
            out.append(full)
    out.sort(key=lambda c: (not c["critical"], -(c["reports"][0].get("received_at") or 0)))
    return out


@page("physician", "technician", "operator", action="acknowledge reports")
async def get_physician(request: web.Request, user: User) -> web.Response:
    _, store = app_of(request)
    cases = await asyncio.to_thread(_physician_cases, store, user)
    return _render(request, "physician.html", cases=cases)


@form("physician", "technician", "operator", action="acknowledge reports")
async def post_ack(request: web.Request, user: User) -> web.StreamResponse:
    cfg, store = app_of(request)
    await asyncio.to_thread(reading.acknowledge, store, cfg, request.match_info["case_id"],
                            user)
    raise _back(request, "/console/physician")


# ---------------------------------------------------------------------------
# Operator
# ---------------------------------------------------------------------------

def _operator_data(cfg: Config, store: Store) -> dict[str, Any]:
    from fenji.routing import outbox_db

    dests = {d["name"]: d for d in store.query("SELECT * FROM destinations")}
    jobs = outbox_db.list_jobs(store)
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for j in jobs:
        per[j["destination"]][j["state"]] += 1
    peers = [{"name": p.name, "url": p.url, "link": dests.get(p.name, {}),
              "jobs": dict(per.get(p.name, {})), "rate_bps": p.rate_bps,
              "schedule": list(p.schedule)} for p in cfg.peers]
    cases = store.query("SELECT case_id, priority, service, state, sending_node, "
                        "study_instance_uid, created_at FROM cases WHERE kind = 'case' "
                        "ORDER BY created_at DESC LIMIT 100")
    facts = stats_mod.case_facts(store, cfg.node.name)
    tat: dict[str, list[tuple[float, float]]] = defaultdict(list)
    vol: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for f in facts:
        if f["turnaround_s"] is not None and f["released_at"]:
            tat[f["priority"]].append((float(f["released_at"]), f["turnaround_s"] / 60))
        if f["time"]:
            vol[time.strftime("%Y-%m", time.localtime(f["time"]))][f["hospital"]] += 1
    month = time.strftime("%Y-%m", time.gmtime())
    try:
        fees = stats_mod.fees(store, cfg.services, node=cfg.node.name, month=month)
    except FenjiError as exc:
        fees = {"error": str(exc)}
    return {"peers": peers, "jobs": jobs[-50:], "cases": cases, "tat": dict(tat),
            "vol": {m: dict(v) for m, v in vol.items()}, "fees": fees, "month": month}


@page("operator", action="see queues, links and the audit trail")
async def get_operator(request: web.Request, user: User) -> web.Response:
    cfg, store = app_of(request)
    data = await asyncio.to_thread(_operator_data, cfg, store)
    t = i18n.words(i18n.choose(request))
    return _render(request, "operator.html", **data,
                   tat_svg=svg.scatter_svg(data["tat"], title=t["tat_plot"], y_label="min"),
                   vol_svg=svg.bars_svg(data["vol"], title=t["volume_plot"]))


def _audit(cfg: Config, store: Store, case_id: str) -> dict[str, Any]:
    from fenji.gateway.keys import load_public

    history = ledger.case_history(store, case_id)
    pub = load_public(cfg.resolve(cfg.keys.public_key))
    res = ledger.verify(store, public_key=pub, trusted=reading.trusted_centers(cfg))
    bad_local = {p.seq for p in res.problems if p.seq is not None and p.node in (None,
                                                                                cfg.node.name)}
    bad_foreign = {(p.node, p.seq) for p in res.problems if p.kind == "foreign"}
    head_ok = res.head is not None and not any(p.kind == "head" for p in res.problems)
    head_seq = int(res.head["seq"]) if res.head else -1
    for e in history:
        if e["origin"] == "local":
            if e["seq"] in bad_local:
                e["status"] = "bad"
            elif head_ok and e["seq"] <= head_seq:
                e["status"] = "verified"
            else:
                e["status"] = "unsigned"
        else:
            e["status"] = "bad" if (e["node"], e["seq"]) in bad_foreign or any(
                p.kind == "foreign" and p.seq is None and p.node == e["node"]
                for p in res.problems) else "verified"
    return {"history": history, "ok": res.ok, "problems": [p.to_dict() for p in res.problems],
            "n_events": res.n_events}


@page("operator", action="see queues, links and the audit trail")
async def get_audit(request: web.Request, user: User) -> web.Response:
    cfg, store = app_of(request)
    case_id = request.match_info["case_id"]
    data = await asyncio.to_thread(_audit, cfg, store, case_id)
    return _render(request, "audit.html", case_id=case_id, **data)


# ---------------------------------------------------------------------------
# Static files and set-up
# ---------------------------------------------------------------------------

async def get_static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name == "htmx.min.js":  # beside the OHIF build: vendor/htmx (make fills both)
        path = request.app[VIEWER_DIR].parent / "htmx" / "htmx.min.js"
    elif name in ("console.css", "console.js"):
        path = HERE / "static" / name
    else:
        raise web.HTTPNotFound(text=f"no static file {name!r}")
    if not path.is_file():
        raise web.HTTPNotFound(text=f"{name} is not installed ({path}); run `make`")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


def add_routes(app: web.Application, cfg: Config, store: Store) -> None:
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                         autoescape=jinja2.select_autoescape(["html"], default=True))
    app[SESSIONS] = sessions_of(cfg, store)
    r = app.router
    r.add_get("/", get_root)
    r.add_get("/login", get_login)
    r.add_post("/login", post_login)
    r.add_post("/logout", post_logout)
    r.add_get("/static/{name}", get_static)
    r.add_get("/console/technician", get_technician)
    r.add_post("/console/technician/release", post_release)
    r.add_post("/console/cases/{case_id}/override", post_override)
    r.add_get("/console/studies/{study}/thumb.png", get_study_thumb)
    r.add_get("/console/studies/{study}/ecg.svg", get_ecg_svg)
    r.add_get("/console/reader", get_reader)
    r.add_post("/console/cases/{case_id}/claim", post_claim)
    r.add_get("/console/reader/cases/{case_id}", get_reader_case)
    r.add_post("/console/cases/{case_id}/report", post_report)
    r.add_get("/console/cases/{case_id}/ecg", get_case_ecg)
    r.add_get("/console/physician", get_physician)
    r.add_post("/console/cases/{case_id}/ack", post_ack)
    r.add_get("/console/operator", get_operator)
    r.add_get("/console/operator/cases/{case_id}/audit", get_audit)
