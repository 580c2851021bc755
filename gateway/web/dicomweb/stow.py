"""STOW-RS: each part through the one ingest path, like a C-STORE."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from fenji.gateway import ingest, reading
from fenji.gateway.access.users import User, require
from fenji.gateway.config import Config
from fenji.gateway.dicom import status as st
from fenji.gateway.dicom.validate import (
    Checked,
)
from fenji.gateway.store.db import Store
from fenji.gateway.web.common import WAKE
from fenji.gateway.web.dicomweb.common import CHUNK_BYTES, _app, _base_url, _dicom_json, _error
from fenji.gateway.web.dicomweb.media import MediaRange, parse_accept
from fenji.gateway.web.limits import multipart_parts

log = logging.getLogger(__name__)

# -- STOW-RS ------------------------------------------------------------------
@dataclass
class _StowResult:
    stored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


def _stow_one(cfg: Config, store: Store, data: bytes, user: User, peer: str | None,
              study: str | None) -> tuple[bool, dict[str, Any]]:
    """One part through the one ingest path (like a C-STORE)."""

    def before_store(checked: Checked) -> ingest.IngestResult | None:
        info = checked.info
        if study is not None and info.study_instance_uid != study:
            return ingest.refused(
                f"(0020,000D) Study Instance UID {info.study_instance_uid} differs from the "
                f"target study {study} (PS3.18 10.5)", st.DATASET_DOES_NOT_MATCH_SOP_CLASS, info)
        if info.sop_class_uid not in reading.VIEWER_REPORT_CLASSES:
            return None
        try:
            report = reading.viewer_report_if_any(
                store, cfg, user, checked.part10, sop_class_uid=info.sop_class_uid,
                study_instance_uid=info.study_instance_uid)
        except reading.ReadingError as exc:
            return ingest.refused(str(exc), reading.refusal_status(exc), info)
        if report is None:
            return None
        log.info("stow user=%s peer=%s report=%s version=%s case=%s from viewer object "
                 "sop=%s", user.name, peer, report.get("report_id"), report.get("version"),
                 report.get("case_id"), info.sop_instance_uid)
        return ingest.handled(info, len(checked.part10), report_id=report.get("report_id"))

    res = ingest.ingest(store, data, ingest.Source("stow-rs", f"viewer:{user.name}", peer),
                        ingest.Limits.of(cfg), on_checked=before_store)
    ref: dict[str, Any] = {"sop": res.sop_instance_uid}
    if res.info is not None:
        ref.update({"class": res.info.sop_class_uid, "study": res.info.study_instance_uid,
                    "series": res.info.series_instance_uid})
    if res.ok:
        return True, {**ref, **res.extra}
    if res.outcome is not ingest.Outcome.REJECTED:
        log.warning("stow user=%s peer=%s refused status=%s reason=%s", user.name, peer,
                    st.describe(res.status), res.reason)
    return False, {**ref, "status": res.status, "reason": res.reason}


def _stow_body(res: _StowResult, base: str, study: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if study is not None:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if res.failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", **({"Value": [f["class"]]} if f.get("class") else {})},
             "00081155": {"vr": "UI", **({"Value": [f["sop"]]} if f.get("sop") else {})},
             "00081197": {"vr": "US", "Value": [f["status"]]}}
            for f in res.failed]}
    if res.stored:
        body["00081199"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": [s["class"]]},
             "00081155": {"vr": "UI", "Value": [s["sop"]]},
             "00081190": {"vr": "UR", "Value": [
                 f"{base}/studies/{s['study']}/series/{s['series']}/instances/{s['sop']}"]}}
            for s in res.stored]}
    return dict(sorted(body.items()))


async def stow(request: web.Request) -> web.Response:
    cfg, store = _app(request)
    user = require(request, "technician", "reader", "operator", action="store instances")
    study = request.match_info.get("study")
    ctype = request.headers.get("Content-Type", "")
    outer = parse_accept(ctype)[0] if ctype else MediaRange("")
    if outer.media != "multipart/related":
        return _error(415, "unsupported_media_type",
                      'STOW-RS takes multipart/related; type="application/dicom"')
    if outer.part_type not in (None, "application/dicom"):
        return _error(415, "unsupported_media_type",
                      f"STOW-RS parts of type {outer.part_type!r} are not supported; send "
                      "application/dicom (Part-10 instances)")
    limit = cfg.dicom.max_instance_bytes
    res = _StowResult()
    async for part in multipart_parts(request, cfg.limits.max_multipart_parts):
        if not isinstance(part, BodyPartReader):
            res.failed.append({"status": st.CANNOT_UNDERSTAND, "reason": "nested multipart"})
            continue
        ptype = (part.headers.get("Content-Type") or "application/dicom").split(";")[0]
        if ptype.strip().lower() != "application/dicom":
            res.failed.append({"status": st.CANNOT_UNDERSTAND,
                               "reason": f"part of type {ptype!r}"})
            await part.release()
            continue
        buf = bytearray()
        too_big = False
        while chunk := await part.read_chunk(CHUNK_BYTES):
            if len(buf) + len(chunk) > limit:
                too_big = True
                await part.release()
                break
            buf += chunk
        if too_big:
            res.failed.append({"status": st.INSTANCE_TOO_LARGE,
                               "reason": f"part exceeds dicom.max_instance_bytes = {limit}"})
            continue
        ok, info = await asyncio.to_thread(_stow_one, cfg, store, bytes(buf), user,
                                           request.remote, study)
        (res.stored if ok else res.failed).append(info)
    log.info("stow user=%s peer=%s stored=%d failed=%d", user.name, request.remote,
             len(res.stored), len(res.failed))
    if any(s.get("report_id") for s in res.stored):

        wake = request.app.get(WAKE)
        if callable(wake):
            wake()  # a signed report is queued back: send it now, not at the next poll
    status = 200 if not res.failed else 409 if not res.stored else 202
    if not res.stored and not res.failed:
        return _error(400, "empty", "no parts in the STOW-RS request")
    return _dicom_json(_stow_body(res, _base_url(request), study), status)
