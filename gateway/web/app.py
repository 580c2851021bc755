"""The node's HTTP API (aiohttp), run by the supervisor process.

Routes so far:

* ``GET  /api/health``, ``GET /api/ready`` — for a load balancer (:mod:`.probes`);
* ``POST /api/cases`` — release a study as a case (JSON body: ``study_instance_uid``,
  ``destination``, ``priority``, ``service``, ``requesting_physician``,
  ``clinical_question``, ``consent_ref``); answers the case and its bundle;
* ``GET  /api/cases``, ``GET /api/cases/{id}``;
* ``/transfer/…`` — the upload protocol other nodes send bundles with
  (:mod:`fenji.routing.transfer_server`).

Errors are JSON (``status``, ``error``, ``message``).  CPU and disk work runs in
threads (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from fenji.gateway import ingest
from fenji.gateway.access import local as access_local
from fenji.gateway.access import scope as access
from fenji.gateway.access.users import middleware as auth_middleware
from fenji.gateway.access.users import require
from fenji.gateway.cases import case as cases_mod
from fenji.gateway.cases import states
from fenji.gateway.config import Config
from fenji.gateway.errors import DecodeError, FenjiError
from fenji.gateway.keys import load_private, public_from_config
from fenji.gateway.reading import report_return
from fenji.gateway.reading.delivery import NodeEvents
from fenji.gateway.store.db import Store
from fenji.gateway.web import dicomweb, probes, reading_routes
from fenji.gateway.web.common import CONFIG, LIVE_CONFIG, ON_RELEASE, STORE, app_of
from fenji.gateway.web.console import routes as console_routes
from fenji.gateway.web.console import session as console_session
from fenji.gateway.web.console import viewer as console_viewer
from fenji.gateway.web.limits import (
    PartTooLarge,
    multipart_parts,
    read_spooled,
    spool_part,
    upload_slots,
)
from fenji.gateway.web.local import build_local_app
from fenji.routing.sender import SenderLoop

# This module's routes (aiohttp's RouteTableDef): each handler names its own.
ROUTES = web.RouteTableDef()

log = logging.getLogger(__name__)



def _error(status: int, err: str, message: str) -> web.Response:
    return web.json_response({"status": status, "error": err, "message": message},
                             status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or "")
        raise
    except FenjiError as exc:
        return _error(exc.http_status, type(exc).__name__, str(exc))
    except ConnectionResetError:  # the client left mid-body: nobody to answer, not a fault
        log.info("client went away peer=%s %s %s", request.remote, request.method,
                 request.path)
        return _error(400, "connection_lost", "the client closed the connection mid-request")


@ROUTES.post("/api/cases")
async def post_case(request: web.Request) -> web.Response:
    cfg, store = app_of(request)
    user = require(request, "technician", "operator", action="release cases")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "bad_json", "request body is not JSON")
    if not isinstance(body, dict) or not body.get("study_instance_uid"):
        return _error(400, "missing_study", "study_instance_uid is required")
    dest = body.get("destination") or cfg.transfer.default_destination
    if not dest or cfg.peer(dest) is None:
        return _error(400, "unknown_destination",
                      f"destination {dest!r} is not a configured peer")
    key = await asyncio.to_thread(load_private, cfg.resolve(cfg.keys.private_key))
    try:
        rel = await asyncio.to_thread(
            cases_mod.release, store, str(body["study_instance_uid"]), destination=dest,
            priority=str(body.get("priority", "routine")), service=body.get("service"),
            requesting_physician=body.get("requesting_physician"),
            clinical_question=body.get("clinical_question"), consent_ref=body.get("consent_ref"),
            released_by="api", sender_node=cfg.node.name, gate_key=key,
            operator=user.name, thresholds=(cfg.quality_ecg, cfg.quality_image),
            hop=cases_mod.next_hop(cfg, dest))
    except cases_mod.CaseHeld as held:
        return web.json_response({"status": 409, "error": "held", "message": str(held),
                                  "case_id": held.case_id, "reasons": held.reasons},
                                 status=409)
    hook = request.app.get(ON_RELEASE)
    if callable(hook):
        await asyncio.to_thread(hook, rel)
    return web.json_response({"case_id": rel.case_id, "kind": rel.kind,
                              "parent_case_id": rel.parent_case_id, "bundle_id": rel.bundle_id,
                              "instances": rel.instances, "bundle_bytes": rel.bundle_bytes,
                              "raw_bytes": rel.raw_bytes}, status=201)


def _ingest_spooled(store: Store, spooled: dict[str, Path], **kw: Any) -> dict[str, Any]:
    """The ECG files of one upload, read from their temp files, through ingest_files."""
    from fenji.gateway.ingest.ecg_files import ingest_files

    files = {name: read_spooled(path) for name, path in spooled.items()}
    return ingest_files(store, files, **kw)


@ROUTES.post("/api/ecg")
async def post_ecg(request: web.Request) -> web.Response:
    """A WFDB record (``.hea`` + ``.dat``) or one DICOM file, as multipart form data."""
    require(request, "technician", "operator", action="upload ECG records")
    cfg, store = app_of(request)
    if not request.content_type.startswith("multipart/"):
        return _error(415, "not_multipart", "send the record's files as multipart/form-data")
    spooled: dict[str, Path] = {}
    fields: dict[str, str] = {}
    total, cap = 0, cfg.ingest.max_record_bytes
    from aiohttp import BodyPartReader

    try:
        async for part in multipart_parts(request, cfg.limits.max_multipart_parts):
            if not isinstance(part, BodyPartReader):
                continue  # nested multipart: not a file
            if not part.filename and not part.name:
                continue  # multipart_parts' next() skips what is left of it
            # Each part streams to a temp file within what is left of the cap:
            # bytes in flight are one chunk, not the upload (issue 17 finding 13).
            try:
                path = await spool_part(part, store.tmp_dir, cap - total)
            except PartTooLarge:
                return _error(413, "too_large", f"upload exceeds ingest.max_record_bytes = "
                                                f"{cap}")
            total += path.stat().st_size
            if part.filename:
                old = spooled.pop(part.filename, None)
                if old is not None:
                    old.unlink(missing_ok=True)
                spooled[part.filename] = path
            else:
                fields[str(part.name)] = (await asyncio.to_thread(read_spooled, path)).decode(
                    "utf-8", "replace")
        if not spooled:
            return _error(400, "no_files", "no files in the upload")
        res = await asyncio.to_thread(
            _ingest_spooled, store, spooled, source=f"http:{request.remote}",
            patient_id=fields.get("patient_id", ""), patient_name=fields.get("patient_name", ""),
            limits=ingest.Limits.of(cfg), peer=request.remote)
    finally:
        for path in spooled.values():
            path.unlink(missing_ok=True)
    status = ingest.HTTP_STATUS[ingest.Outcome(res["outcome"])]
    if status >= 400:
        res.setdefault("error", res["outcome"])
        res.setdefault("message", res.get("reason", res["outcome"]))
        res["dimse_status"] = res.pop("status", None)
        res["status"] = status
    return web.json_response(res, status=status)


@ROUTES.get("/api/cases")
async def get_cases(request: web.Request) -> web.Response:
    store = request.app[STORE]
    user = require(request, "technician", "reader", "physician", "operator",
                   action="list cases")
    rows = await asyncio.to_thread(cases_mod.list_cases, store,
                                   state=request.query.get("state"))
    if access.restricted(user):
        rows = [r for r in rows if r.get("service") in user.services]
    return web.json_response(rows)


@ROUTES.get("/api/cases/{case_id}")
async def get_case(request: web.Request) -> web.Response:
    store = request.app[STORE]
    user = require(request, "technician", "reader", "physician", "operator",
                   action="read cases")
    case = await asyncio.to_thread(cases_mod.get_case, store, request.match_info["case_id"])
    if case is None:
        return _error(404, "no_case", f"case {request.match_info['case_id']} not found")
    access.check_case(user, case)
    return web.json_response(await asyncio.to_thread(report_return.with_reports, store, case))


def _previews_dir(store: Store, case_id: str) -> Path | None:
    if not case_id.isalnum():
        return None
    return store.root / "previews" / case_id


@ROUTES.get("/api/cases/{case_id}/previews")
async def get_previews(request: web.Request) -> web.Response:
    from fenji.codecs.compress.bundle import Preview

    store = request.app[STORE]
    user = require(request, "technician", "reader", "physician", "operator",
                   action="read previews")
    case_id = request.match_info["case_id"]
    folder = _previews_dir(store, case_id)

    def read_all() -> list[tuple[str, Preview]] | None:
        if folder is None or not folder.is_dir():
            return None
        return [(p.stem, Preview.from_bytes(p.read_bytes()))
                for p in sorted(folder.glob("*.prev"))]

    found = await asyncio.to_thread(read_all)
    if found is None:
        return _error(404, "no_preview", f"no preview received for case {case_id}")
    out = []
    for stem, pv in found:
        await asyncio.to_thread(access.check_preview, store, user, case_id, pv.kind)
        out.append({"index": int(stem), "kind": pv.kind, "meta": pv.meta,
                    "url": f"/api/cases/{case_id}/previews/{stem}"})
    return web.json_response(out)


@ROUTES.get("/api/cases/{case_id}/previews/{index}")
async def get_preview(request: web.Request) -> web.Response:
    """An image preview as PNG; an ECG strip as JSON samples."""
    from fenji.codecs.compress.bundle import Preview
    from fenji.gateway.web.png import encode_png

    user = require(request, "technician", "reader", "physician", "operator",
                   action="read previews")

    store = request.app[STORE]
    case_id, index = request.match_info["case_id"], request.match_info["index"]
    folder = _previews_dir(store, case_id)

    def read_one() -> Preview | None:
        if folder is None or not index.isdigit() or not (folder / f"{index}.prev").exists():
            return None
        return Preview.from_bytes((folder / f"{index}.prev").read_bytes())

    pv = await asyncio.to_thread(read_one)
    if pv is None:
        return _error(404, "no_preview", f"no preview {index} for case {case_id}")
    await asyncio.to_thread(access.check_preview, store, user, case_id, pv.kind)
    # A bomb raises DecodeError (422, naming limits.max_preview_pixels) unread.
    cap = request.app[CONFIG].limits.max_preview_pixels
    try:
        arr = await asyncio.to_thread(pv.array, max_pixels=cap)
    except DecodeError as exc:
        log.warning("preview refused case=%s index=%s reason=%s", case_id, index, exc)
        return _error(422, "preview_refused", f"preview {index} of case {case_id}: {exc} "
                                              f"(limits.max_preview_pixels = {cap})")
    if pv.kind == "image":
        png = await asyncio.to_thread(encode_png, arr)
        return web.Response(body=png, content_type="image/png")
    return web.json_response({"meta": pv.meta, "samples": arr[:, 0].tolist()})


def _forward_or_keep(cfg: Config, store: Store, receipt: dict[str, Any],
                     manifest: dict[str, Any], part: Path, wake: Callable[[], None]) -> bool:
    """After a bundle was stored: record the case; a relay queues the same bundle onward;
    a center queues it to its archives ([[egress]])."""
    import time

    uids = [str(i["sop_instance_uid"]) for i in receipt.get("instances", [])]
    case = manifest.get("case", {})
    final = case.get("destination")
    if case.get("bundle_kind") == "report" and final == cfg.node.name:
        report_return.report_arrived(store, cfg, manifest, uids)
        return False
    state = cases_mod.record_received(store, manifest, cfg.node.name, instances=uids,
                                      sender=str(receipt["sender"]),
                                      trusted=report_return.trusted_centers(cfg))
    if state == "received" and cfg.egress and uids:
        from fenji.routing.egress import enqueue_case

        enqueue_case(cfg, store, str(case["case_id"]),
                     cases_mod.PRIORITIES.get(str(case.get("priority")), 2), time.time())
        wake()
    if not final or final == cfg.node.name:
        return False
    hop = cases_mod.next_hop(cfg, final)
    if hop is None:
        log.error("cannot forward case=%s: no route to destination %r from %s",
                  case.get("case_id"), final, cfg.node.name)
        return False
    bundle_id = str(case.get("bundle_id") or manifest.get("bundle_id") or "")
    if not bundle_id:
        return False
    if not _queue_onward(cfg, store, case, bundle_id, part, hop, wake, cut_through=False):
        # Queued cut-through while it arrived: the next hop's receipt may be here
        # already, before this node had the case (it moved nothing then).
        got = store.query_one("SELECT receipt_json FROM receipts WHERE bundle_id = ?",
                              (bundle_id,))
        if got and json.loads(got["receipt_json"]).get("instances"):
            with contextlib.suppress(states.CaseStateError):
                cases_mod.set_state(store, str(case["case_id"]), "delivered", who=states.NODE)
    return False  # the upload file itself may go: the bundle is linked under bundles/


def _queue_onward(cfg: Config, store: Store, case: dict[str, Any], bundle_id: str, part: Path,
                  hop: str, wake: Callable[[], None], *, cut_through: bool) -> bool:
    """Link the upload's file under ``bundles/`` and queue it to ``hop``, with the
    ledger's "forwarded"; False when it was queued already (nothing done)."""
    import os
    import time

    from fenji.routing import outbox_db

    if store.query_one("SELECT 1 AS x FROM outbox WHERE bundle_id = ?", (bundle_id,)):
        return False
    target = store.root / "bundles" / f"{bundle_id}.fbundle"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():  # a hard link: a retried finalize still finds the upload
        # (another process of a center finalizing the same bundle may link it first)
        with contextlib.suppress(FileExistsError):
            os.link(part, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    total = _upload_length(store, bundle_id) if cut_through else target.stat().st_size
    outbox_db.enqueue(store, bundle_id, str(case["case_id"]), hop,
                      cases_mod.PRIORITIES.get(str(case.get("priority")), 2), total,
                      time.time())
    from fenji.gateway.audit import ledger

    final = case.get("destination")
    ledger.record(store, "forwarded", node=cfg.node.name, actor=cfg.node.name, role="node",
                  obj=bundle_id, case_id=str(case["case_id"]),
                  detail={"from": case.get("sender"), "to": final, "via": hop,
                          "bundle_kind": case.get("bundle_kind"),
                          **({"cut_through": True} if cut_through else {})})
    log.info("relay case=%s bundle=%s from=%s to=%s via=%s cut_through=%s",
             case.get("case_id"), bundle_id, case.get("sender"), final, hop,
             "yes" if cut_through else "no")
    wake()
    return True


def _upload_length(store: Store, bundle_id: str) -> int:
    row = store.query_one("SELECT length FROM uploads WHERE bundle_id = ? ORDER BY created_at "
                          "DESC LIMIT 1", (bundle_id,))
    return int(row["length"]) if row else 0


def _cut_through(cfg: Config, store: Store, manifest: dict[str, Any], row: dict[str, Any],
                 part: Path, wake: Callable[[], None]) -> None:
    """A STAT bundle passing through, its manifest in while the rest still arrives:
    queue it onward now (routing/relay.py); every other bundle waits for its finalize."""
    case = manifest.get("case", {})
    final = case.get("destination")
    if case.get("priority") != "stat" or case.get("bundle_kind") == "report" or not final \
            or final == cfg.node.name or case.get("bundle_id") != row["bundle_id"]:
        return
    hop = cases_mod.next_hop(cfg, str(final))
    if hop is not None and case.get("case_id"):
        _queue_onward(cfg, store, case, str(row["bundle_id"]), part, hop, wake,
                      cut_through=True)


def build_app(cfg: Config, store: Store,
              on_release: Callable[[cases_mod.Released], None] | None = None,
              wake: Callable[[], None] = lambda: None,
              readiness: probes.Readiness | None = None) -> web.Application:
    live: list[Config] = [cfg]  # [[peers]] and [[users]] reload without a restart (reload)
    app = web.Application(middlewares=[console_viewer.dicomweb_log, errors_as_json,
                                       console_viewer.cors_middleware(cfg),
                                       console_session.middleware(lambda: live[0]),
                                       auth_middleware(lambda: live[0]),
                                       upload_slots(cfg.limits.max_uploads_per_user)],
                          client_max_size=80 * 1024 * 1024)
    app[CONFIG] = cfg
    app[STORE] = store
    if on_release is not None:
        app[ON_RELEASE] = on_release
    probes.add_routes(app, readiness or probes.Readiness())
    app.add_routes(ROUTES)
    reading_routes.add_routes(app, wake)
    dicomweb.add_routes(app, cfg, store)
    console_routes.add_routes(app, cfg, store)  # the web console (sign-in, pages)
    # Always: a node that lists no peer yet refuses uploads saying how to pair.
    from fenji.routing.transfer_server import ReceiverContext, add_routes

    app[LIVE_CONFIG] = live

    def on_delivered(receipt: dict[str, Any], manifest: dict[str, Any], part: Path) -> bool:
        return _forward_or_keep(live[0], store, receipt, manifest, part, wake)

    def on_manifest(manifest: dict[str, Any], row: dict[str, Any], part: Path) -> None:
        _cut_through(live[0], store, manifest, row, part, wake)

    peers = {p.name: public_from_config(p.public_key, cfg.data_dir) for p in cfg.peers}
    ctx = ReceiverContext(store=store, node_name=cfg.node.name,
                          key=load_private(cfg.resolve(cfg.keys.private_key)), peers=peers,
                          upload_dir=store.root / "uploads",
                          max_clock_skew_s=cfg.transfer.max_clock_skew_s,
                          require_tls=cfg.http.tls,
                          max_uploads_per_peer=cfg.limits.max_uploads_per_peer,
                          abandoned_upload_s=cfg.limits.abandoned_upload_s,
                          max_preview_pixels=cfg.limits.max_preview_pixels,
                          limits=ingest.Limits.of(cfg), on_delivered=on_delivered,
                          on_manifest=on_manifest)
    add_routes(app, ctx)
    console_viewer.add_routes(app, cfg)  # last: OHIF's files at the root, by exact name
    return app


def _warm_codecs() -> None:
    """The codecs and their Numba kernels loaded now, not in the first urgent case's
    release, send or receipt (fenji.codecs.compress.warm)."""
    from fenji.codecs.compress.warm import warm

    try:
        seconds = warm()
    except Exception:  # a warm-up is a courtesy: the first case loads them anyway
        log.warning("codec warm-up failed", exc_info=True)
        return
    log.info("codecs loaded ms=%.0f", seconds * 1000)


class HttpService:
    """Runs the app on its own event loop thread inside the supervisor."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.loop = asyncio.new_event_loop()
        self.sender: Any = None
        self._stop_sender: asyncio.Event | None = None
        self._sender_task: asyncio.Task[None] | None = None
        # The node sets these: its DICOM listener is up; it is shutting down (/api/ready).
        self.readiness = probes.Readiness()
        self.dicom_up = self.readiness.dicom_up
        self.draining = self.readiness.draining
        self.app = build_app(cfg, store, self._on_release, wake=self.wake_sender,
                             readiness=self.readiness)
        self._runner: web.AppRunner | None = None
        self._local_runner: web.AppRunner | None = None
        self._local_path = Path()
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self) -> int:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="http", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        assert self.port is not None
        log.info("http listening host=%s port=%d", self.cfg.http.host, self.port)
        return self.port

    def wake_sender(self) -> None:
        if self.sender is not None:
            self.loop.call_soon_threadsafe(self.sender.wake.set)

    def _on_release(self, rel: cases_mod.Released) -> None:
        import time

        hop = cases_mod.next_hop(self.cfg, rel.destination)
        if hop is None:
            return
        cases_mod.enqueue_release(self.store, rel, hop, time.time())
        self.wake_sender()

    async def _stable_study_timer(self) -> None:
        """Release studies that stopped growing (transfer.stable_study_s), as the
        case records: released_by = timer.  Held cases wait for a person."""
        import time

        cfg = self.cfg
        dest = cfg.transfer.default_destination
        key = await asyncio.to_thread(load_private, cfg.resolve(cfg.keys.private_key))
        period = max(1.0, min(30.0, cfg.transfer.stable_study_s / 4))
        while True:
            await asyncio.sleep(period)
            try:
                due = await asyncio.to_thread(cases_mod.stable_studies, self.store, dest,
                                              cfg.transfer.stable_study_s, time.time())
                for study in due:
                    try:
                        rel = await asyncio.to_thread(
                            cases_mod.release, self.store, study, destination=dest,
                            released_by="timer", sender_node=cfg.node.name, gate_key=key,
                            operator="stable-study timer",
                            thresholds=(cfg.quality_ecg, cfg.quality_image),
                            hop=cases_mod.next_hop(cfg, dest))
                    except cases_mod.CaseHeld as held:
                        log.warning("timer: case %s held: %s", held.case_id, held.reasons[:3])
                        continue
                    except cases_mod.CaseError as exc:
                        log.warning("timer: study %s not released: %s", study, exc)
                        continue
                    await asyncio.to_thread(self._on_release, rel)
            except Exception:  # the timer must survive any one bad study
                log.exception("stable-study timer round failed")

    async def _start(self) -> None:
        if self.cfg.peers:  # a node that moves bundles: load the codecs before the first
            threading.Thread(target=_warm_codecs, name="codec-warm-up", daemon=True).start()
        if self.cfg.transfer.stable_study_s > 0 and self.cfg.transfer.default_destination:
            self._timer_task = asyncio.create_task(self._stable_study_timer())
        if self.cfg.peers or self.cfg.egress:
            self.sender = SenderLoop(self.cfg, self.store,
                                     events=NodeEvents(self.cfg, self.store))
            self._stop_sender = asyncio.Event()
            self._sender_task = asyncio.create_task(self.sender.run(self._stop_sender))
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await self._start_local()
        ssl_ctx = None
        if self.cfg.http.tls:
            from fenji.gateway.keys import server_ssl_context

            k = self.cfg.keys
            ssl_ctx = server_ssl_context(self.cfg.resolve(k.certificate),
                                         self.cfg.resolve(k.private_key),
                                         [self.cfg.resolve(p.cert) for p in self.cfg.peers])
        self._ssl_ctx = ssl_ctx
        site = web.TCPSite(self._runner, self.cfg.http.host, self.cfg.http.port,
                           reuse_address=True, ssl_context=ssl_ctx)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        if self.cfg.web.port:
            # People and viewers: the same routes without a client certificate
            # (user tokens authenticate them, auth.py).
            web_site = web.TCPSite(self._runner, self.cfg.web.host, self.cfg.web.port,
                                   reuse_address=True)
            await web_site.start()
            log.info("web listening host=%s port=%d", self.cfg.web.host, self.cfg.web.port)

    async def _start_local(self) -> None:
        """The local API on its UNIX socket (web/local.py), for `fenji` commands on this
        machine; not for a center's several processes on one store (each command then
        works on the store itself, as when no node runs)."""
        if self.cfg.node.shared_store:
            return
        path = access_local.socket_path(self.cfg.data_dir)
        try:
            sock = access_local.listen(path)
        except OSError as exc:
            log.warning("local API not served at %s (%s): fenji commands work on the store "
                        "themselves", path, exc)
            return
        self._local_runner = web.AppRunner(build_local_app(lambda: self.cfg, self.store,
                                                           self.wake_sender),
                                           access_log=None)
        await self._local_runner.setup()
        await web.SockSite(self._local_runner, sock).start()
        self._local_path = path

    def reload(self, cfg: Config) -> None:
        """Take a changed ``[[peers]]`` and ``[[users]]`` without a restart (SIGHUP,
        ``fenji peer add``, ``fenji user add``): the receiver's known keys, pinned
        certificates, the sender's routes, and who the API and console let in."""
        asyncio.run_coroutine_threadsafe(self._reload(cfg), self.loop)

    async def _reload(self, cfg: Config) -> None:
        from fenji.routing.transfer_server import CTX

        keys = await asyncio.to_thread(  # key files are read off the loop
            lambda: {p.name: public_from_config(p.public_key, cfg.data_dir) for p in cfg.peers})
        ctx = self.app.get(CTX)
        if ctx is not None:
            ctx.peers.clear()
            ctx.peers.update(keys)
        ssl_ctx = getattr(self, "_ssl_ctx", None)
        if ssl_ctx is not None:
            for p in cfg.peers:
                if p.cert:
                    await asyncio.to_thread(ssl_ctx.load_verify_locations,
                                            cafile=str(cfg.resolve(p.cert)))
        self.cfg = cfg
        self.app[LIVE_CONFIG][0] = cfg
        if self.sender is not None:
            self.sender.cfg = cfg
            self.sender.peer_keys = dict(keys)
            self.sender.wake.set()
        elif cfg.peers:
            self.sender = SenderLoop(cfg, self.store, events=NodeEvents(cfg, self.store))
            self._stop_sender = asyncio.Event()
            self._sender_task = asyncio.create_task(self.sender.run(self._stop_sender))
        log.info("config reloaded: peers %s; users %s", ", ".join(sorted(keys)) or "none",
                 ", ".join(sorted(u.name for u in cfg.users)) or "none")

    def stop(self) -> None:
        if self._runner is None:
            return
        async def shutdown() -> None:
            timer = getattr(self, "_timer_task", None)
            if timer is not None:
                timer.cancel()
            if self._stop_sender is not None and self._sender_task is not None:
                self._stop_sender.set()
                self.sender.wake.set()
                try:
                    await asyncio.wait_for(self._sender_task, timeout=20)
                except (TimeoutError, asyncio.CancelledError):
                    self._sender_task.cancel()
            assert self._runner is not None
            await self._runner.cleanup()
            if self._local_runner is not None:
                await self._local_runner.cleanup()
                with contextlib.suppress(OSError):
                    self._local_path.unlink()

        fut = asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        try:
            fut.result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=30)
