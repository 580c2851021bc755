"""A report's way back (DESIGN.md §3 step 9): signed at the center, queued back down,
arriving at the edge, delivered to its PACS/HIS, acknowledged.

The reader signs a report (:func:`submit_report`): fenji builds the signed document
(:mod:`fenji.gateway.reports.document`), a Basic Text SR and an encapsulated PDF in
the case's study, stores both, and queues them back to the sending hospital as a
small high-priority bundle through the same outbox, relays and transfer protocol.
An amendment is a new version that supersedes the earlier one with a reason;
nothing is overwritten.

At the edge the report bundle arrives like any other (:func:`report_arrived`): its
signatures are checked against the center's key, it is shown on the case, handed to
the local PACS/HIS (``reports.deliver_to``), a critical finding is flagged at once
(log line, API state, ``reports.critical_hook``), and the requesting physician
acknowledges it (:func:`acknowledge`).  Every step is a ledger event.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fenji.gateway import ingest
from fenji.gateway.audit import ledger
from fenji.gateway.cases import states
from fenji.gateway.cases.bundles import write_plan
from fenji.gateway.cases.case import PRIORITIES, manifest_sha256, next_hop, quality_of
from fenji.gateway.dicom import charset
from fenji.gateway.keys import canonical_json
from fenji.gateway.reading.claims import _case, _check_reader
from fenji.gateway.reading.errors import Forbidden, NotFound, ReadingError

if TYPE_CHECKING:
    from fenji.gateway.access.users import User
    from fenji.gateway.config import Config
    from fenji.gateway.store.db import Store

log = logging.getLogger(__name__)


def _case_instances(store: Store, case_id: str) -> list[dict[str, Any]]:
    return store.query(
        "SELECT i.sop_instance_uid, i.sop_class_uid, i.series_instance_uid, i.sha256, "
        "i.specific_character_set, i.charset_source FROM case_instances ci "
        "JOIN instances i ON i.sop_instance_uid = ci.sop_instance_uid "
        "WHERE ci.case_id IN (SELECT ? UNION SELECT case_id FROM cases WHERE "
        "parent_case_id = ?) ORDER BY i.series_instance_uid, i.instance_number, "
        "i.sop_instance_uid", (case_id, case_id))


_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                   "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID",
                   "StudyDescription", "SpecificCharacterSet", "PatientAge", "Modality",
                   "InstitutionName")


def _study_attrs(store: Store, inst: dict[str, Any], default_charset: str = ""
                 ) -> dict[str, Any]:
    """The study's attributes from its stored instance, text decoded with its (0008,0005)
    or the default applied when it was indexed, else ``default_charset``
    (gateway/dicom/charset.py, not pydicom's guess)."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(store.read_blob(inst["sha256"])), stop_before_pixels=True,
                 force=True)
    charset.decode_dataset(ds, charset.stored_default(inst, default_charset))
    return {k: ds.get(k) for k in _STUDY_KEYWORDS if k in ds}


def _part10(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _put(store: Store, cfg: Config, data: bytes, actor: str) -> tuple[str, str]:
    """A report's objects enter through the one ingest path, under the config's limits."""
    res = ingest.ingest(store, data, ingest.Source("report", actor), ingest.Limits.of(cfg))
    if not res.ok or res.sop_instance_uid is None or res.sha256 is None:
        raise ReadingError(f"report object not stored ({res.outcome.value}): {res.reason}")
    return res.sop_instance_uid, res.sha256


def _reader_key(cfg: Config, name: str, passphrase: bytes | None) -> Any:
    """The reader's key, unlocked with their passphrase for this one signature."""
    from fenji.gateway.keys import load_signing_key

    priv, _ = cfg.reader_key_paths(name)
    if not priv.exists():
        raise ReadingError(f"reader {name!r} has no signing key at {priv}: run "
                           f"`fenji keys init --reader {name}`")
    return load_signing_key(priv, passphrase, who=name)


def may_sign(store: Store, cfg: Config, case_id: str, user: User, *,
             amendment_reason: str | None = None, now: float | None = None
             ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Raise unless ``user`` may sign a report (or an amendment) for the case now.

    Returns the case and its current report (``None`` before the first).
    """
    now = time.time() if now is None else now
    case = _case(store, case_id)
    _check_reader(cfg, user, case, "sign reports")
    current = store.query_one("SELECT * FROM reports WHERE case_id = ? AND status = 'current' "
                              "AND origin_node = ?", (case_id, cfg.node.name))
    if current is None:
        if amendment_reason:
            raise ReadingError(f"case {case_id} has no report to amend")
        if case["read_state"] != "claimed" or case["claimed_by"] != user.name:
            raise ReadingError(f"case {case_id} is {case['read_state'] or case['state']}"
                               f"{' by ' + case['claimed_by'] if case['claimed_by'] else ''}; "
                               f"claim it first (fenji worklist claim {case_id})")
        if (case["claimed_until"] or 0) < now:
            raise ReadingError(f"your claim on case {case_id} expired; claim it again")
    elif not (amendment_reason or "").strip():
        raise ReadingError(f"case {case_id} already has report version {current['version']}; "
                           "an amendment needs a reason (--amend-reason)")
    return case, current


def submit_report(store: Store, cfg: Config, case_id: str, user: User, *, findings: str,
                  impression: str, critical: bool = False, amendment_reason: str | None = None,
                  now: float | None = None, pdf_from_viewer: bytes | None = None,
                  passphrase: bytes | None = None) -> dict[str, Any]:
    """Sign, store and queue back a report (or an amendment, with ``amendment_reason``).

    ``passphrase`` unlocks the reader's encrypted signing key (keys.KeyLocked, 403,
    without it or with a wrong one); it is used for this signature and not kept.

    A first report needs the reader's claim; an amendment needs a reason and
    supersedes the current version.  Returns the report row (with the bundle id).
    """
    now = time.time() if now is None else now
    if not findings.strip() and not impression.strip():
        raise ReadingError("a report needs findings or an impression (both are empty)")
    case, current = may_sign(store, cfg, case_id, user, amendment_reason=amendment_reason,
                             now=now)
    from fenji.gateway import reports
    from fenji.gateway.keys import load_private, load_public

    manifest = json.loads(case["manifest_json"]) if case["manifest_json"] else {}
    q = store.query_one("SELECT attestation_json FROM quality WHERE case_id = ?", (case_id,))
    attestation = json.loads(q["attestation_json"]) if q and q["attestation_json"] else None
    insts = _case_instances(store, case_id)
    if not insts:
        raise ReadingError(f"case {case_id} has no instances at this node")
    attrs = _study_attrs(store, insts[0], cfg.dicom.default_character_set)
    patient = {"id": str(attrs.get("PatientID") or ""), "name": str(attrs.get("PatientName")
                                                                     or ""),
               "birth_date": str(attrs.get("PatientBirthDate") or ""),
               "sex": str(attrs.get("PatientSex") or ""),
               "age": str(attrs.get("PatientAge") or "")}
    modalities = sorted({str(r["modality"]) for r in store.query(
        "SELECT DISTINCT s.modality FROM case_instances ci JOIN instances i ON "
        "i.sop_instance_uid = ci.sop_instance_uid JOIN series s ON s.series_instance_uid = "
        "i.series_instance_uid WHERE ci.case_id = ? AND s.modality IS NOT NULL",
        (case_id,))})
    study = {"date": str(attrs.get("StudyDate") or ""), "time": str(attrs.get("StudyTime") or ""),
             "modality": "/".join(modalities) or str(attrs.get("Modality") or ""),
             "description": str(attrs.get("StudyDescription") or ""),
             "accession_number": str(attrs.get("AccessionNumber") or ""),
             "sending_institution": str(attrs.get("InstitutionName") or ""),
             "reading_institution": cfg.node.institution or cfg.node.name}
    case_doc = {k: case[k] for k in ("case_id", "study_instance_uid", "service", "priority",
                                     "requesting_physician", "clinical_question")}
    case_doc["sender"] = case["sending_node"]
    u = cfg.user(user.name)
    display = (u.display_name if u and u.display_name else user.name)
    doc = reports.build_report(
        case=case_doc, manifest_sha256=case["manifest_sha256"] or manifest_sha256(manifest),
        attestation=attestation,
        instances=[{k: i[k] for k in ("sop_class_uid", "sop_instance_uid",
                                      "series_instance_uid")} for i in insts],
        reader=user.name, reader_display=display, center=cfg.node.name, findings=findings,
        impression=impression, critical=critical,
        version=(current["version"] + 1) if current else 1,
        supersedes=current["report_id"] if current else None,
        amendment_reason=amendment_reason if current else None, signed_at=now, patient=patient,
        examination=study, timezone=cfg.timezone)
    rkey = _reader_key(cfg, user.name, passphrase)
    signed = reports.sign_report(doc, rkey)
    _, rpub = cfg.reader_key_paths(user.name)
    endorsement = reports.endorse_reader(load_private(cfg.resolve(cfg.keys.private_key)),
                                         cfg.node.name, user.name, display, load_public(rpub))
    sr = reports.build_sr(signed, endorsement, attrs)
    sr_bytes = _part10(sr)
    pdf = pdf_from_viewer if pdf_from_viewer is not None else reports.render_pdf(signed,
                                                                                 endorsement)
    # The reader also signs the PDF's bytes, so it verifies even when it came
    # from the viewer and cannot be re-rendered from the report.
    rendition = reports.sign_rendition(signed, pdf, rkey)
    pdf_ds = reports.build_pdf_dicom(pdf, signed, endorsement, attrs,
                                     sr_series_uid=sr.SeriesInstanceUID, rendition=rendition)
    pdf_bytes = _part10(pdf_ds)
    sr_uid, _ = _put(store, cfg, sr_bytes, f"reader:{user.name}")
    pdf_uid, _ = _put(store, cfg, pdf_bytes, f"reader:{user.name}")
    report = signed["report"]
    rid = str(report["report_id"])
    bundle_id = uuid.uuid4().hex
    kind = "amended" if current else "reported"
    with store.atomic() as con:
        if current:
            con.execute("UPDATE reports SET status = 'superseded', superseded_by = ? "
                        "WHERE report_id = ?", (rid, current["report_id"]))
        con.execute(
            "INSERT INTO reports(report_id, case_id, version, supersedes, status, reader, "
            "signed_at, critical, amendment_reason, report_json, signature, endorsement_json, "
            "sr_sop_instance_uid, pdf_sop_instance_uid, origin_node, bundle_id, created_at) "
            "VALUES (?, ?, ?, ?, 'current', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rid, case_id, report["version"], report.get("supersedes"), user.name, now,
             int(bool(critical)), report.get("amendment_reason"),
             json.dumps(report, sort_keys=True, ensure_ascii=False), signed["signature"],
             json.dumps(endorsement, sort_keys=True), sr_uid, pdf_uid, cfg.node.name,
             bundle_id, now))
        con.executemany("INSERT OR IGNORE INTO case_instances(case_id, sop_instance_uid) "
                        "VALUES (?, ?)", [(rid, sr_uid), (rid, pdf_uid)])
        states.move(con, case_id, "amend" if current else "sign", who=user.role, now=now,
                    column=states.READ, also={"claimed_until": None})
        ledger.record(store, kind, node=cfg.node.name, actor=user.name, role=user.role,
                      obj=rid, case_id=case_id,
                      detail={"version": report["version"], "critical": bool(critical),
                              "supersedes": report.get("supersedes"),
                              "reason": report.get("amendment_reason"),
                              "signature": signed["signature"][:16]}, con=con, at=now)
    _queue_report(store, cfg, case, rid, bundle_id, signed, endorsement,
                  [sr_bytes, pdf_bytes], now)
    log.info("report signed case=%s report=%s version=%d reader=%s critical=%s",
             case_id, rid, report["version"], user.name, bool(critical))
    row = store.query_one("SELECT * FROM reports WHERE report_id = ?", (rid,))
    assert row is not None
    return row


def _queue_report(store: Store, cfg: Config, case: dict[str, Any], report_id: str,
                  bundle_id: str, signed: dict[str, Any], endorsement: dict[str, Any],
                  blobs: list[bytes], now: float) -> None:
    """The report travels back down as a small bundle through the same outbox."""
    from fenji.codecs.compress.bundle import plan_bundle
    from fenji.routing import outbox_db

    dest = case["sending_node"]
    if not dest:
        log.warning("report %s: case %s has no sending node; kept here only", report_id,
                    case["case_id"])
        return
    hop = next_hop(cfg, dest)
    if hop is None:
        log.error("report %s cannot go back: no route from %s to %s (configure [[peers]] or "
                  "transfer.default_destination)", report_id, cfg.node.name, dest)
        return
    audit = ledger.export_case(store, case["case_id"])
    meta = {"case_id": case["case_id"], "bundle_id": bundle_id, "bundle_kind": "report",
            "kind": "report", "study_instance_uid": case["study_instance_uid"],
            "priority": cfg.reports.return_priority, "service": case["service"],
            "destination": dest, "sender": cfg.node.name,
            "report": {"signed": signed, "endorsement": endorsement},
            "audit": audit}
    plan = plan_bundle(meta, blobs)
    _, size = write_plan(store, plan, bundle_id)
    outbox_db.enqueue(store, bundle_id, report_id, hop, PRIORITIES[cfg.reports.return_priority],
                      size, now)


def trusted_centers(cfg: Config, *, self_only_if_center: bool = False) -> dict[str, Any]:
    """Node keys this node's config vouches for: its peers, its known nodes and
    itself (with ``self_only_if_center``, itself only when it is a center, as
    `fenji report verify` wants for endorsements of readers)."""
    from fenji.gateway.keys import load_public, public_from_config

    out: dict[str, Any] = {}
    for p in cfg.peers:
        if p.public_key:
            out[p.name] = public_from_config(p.public_key, cfg.data_dir)
    for k in cfg.known_nodes:
        if k.public_key:
            out[k.name] = public_from_config(k.public_key, cfg.data_dir)
    if cfg.node.role == "center" or not self_only_if_center:
        out[cfg.node.name] = load_public(cfg.resolve(cfg.keys.public_key))
    return out


def report_arrived(store: Store, cfg: Config, manifest: dict[str, Any], uids: list[str],
                   now: float | None = None) -> dict[str, Any]:
    """A report bundle reached its destination (the edge): verify, keep, deliver, flag."""
    from fenji.gateway import reports

    now = time.time() if now is None else now
    meta = manifest.get("case", {})
    signed = meta.get("report", {}).get("signed") or {}
    endorsement = meta.get("report", {}).get("endorsement") or {}
    doc = signed.get("report") or {}
    case_id = str(meta.get("case_id") or doc.get("case_id") or "")
    rid = str(doc.get("report_id") or "")
    problems: list[str] = []
    case = store.query_one("SELECT * FROM cases WHERE case_id = ?", (case_id,))
    expect_manifest = case["manifest_sha256"] if case else None
    att = None
    q = store.query_one("SELECT attestation_json FROM quality WHERE case_id = ?", (case_id,))
    if q and q["attestation_json"]:
        att = json.loads(q["attestation_json"])
    try:
        res = reports.verify_signed(signed, endorsement, trusted_centers(cfg))
        problems += list(res.problems)
    except Exception as exc:  # noqa: BLE001 - an unreadable report is a problem, not a crash
        problems.append(f"report could not be checked: {exc}")
    if case is None:
        problems.append(f"case {case_id} is unknown at {cfg.node.name}")
    if expect_manifest and doc.get("manifest_sha256") != expect_manifest:
        problems.append(f"manifest_sha256 {doc.get('manifest_sha256')} != the case's "
                        f"{expect_manifest} as sent from here")
    if att is not None and doc.get("attestation_sha256") != hashlib.sha256(
            canonical_json(att)).hexdigest():
        problems.append("attestation_sha256 does not match this node's signed attestation")
    verified = not problems
    sr_uid = pdf_uid = None
    for uid in uids:
        row = store.query_one("SELECT sop_class_uid FROM instances WHERE sop_instance_uid = ?",
                              (uid,))
        if row and row["sop_class_uid"].startswith("1.2.840.10008.5.1.4.1.1.88."):
            sr_uid = uid
        elif row and row["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.104.1":
            pdf_uid = uid
    critical = bool(doc.get("critical"))
    with store.atomic() as con:
        if doc.get("supersedes"):
            con.execute("UPDATE reports SET status = 'superseded', superseded_by = ? "
                        "WHERE report_id = ?", (rid, doc["supersedes"]))
        fresh = con.execute(
            "INSERT OR IGNORE INTO reports(report_id, case_id, version, supersedes, status, "
            "reader, signed_at, critical, amendment_reason, report_json, signature, "
            "endorsement_json, sr_sop_instance_uid, pdf_sop_instance_uid, origin_node, "
            "bundle_id, received_at, created_at) VALUES "
            "(?, ?, ?, ?, 'current', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rid, case_id, int(doc.get("version") or 1), doc.get("supersedes"),
             str(doc.get("reader") or "?"), now, int(critical), doc.get("amendment_reason"),
             json.dumps(doc, sort_keys=True, ensure_ascii=False), str(signed.get("signature")),
             json.dumps(endorsement, sort_keys=True), sr_uid, pdf_uid,
             str(meta.get("sender") or doc.get("center") or "?"), meta.get("bundle_id"), now,
             now)).rowcount
        # The SR and PDF belong to the case here: never sent back up as an addendum.
        con.executemany("INSERT OR IGNORE INTO case_instances(case_id, sop_instance_uid) "
                        "VALUES (?, ?)", [(case_id, u) for u in (sr_uid, pdf_uid) if u])
        if verified and fresh:  # a bundle delivered twice moves nothing twice
            try:
                states.move(con, case_id, "amend" if doc.get("supersedes") else "report",
                            who=states.NODE, now=now)
            except states.CaseStateError as exc:  # kept and shown; the state says why not
                log.error("report %s arrived for case %s in a state it cannot move from: %s",
                          rid, case_id, exc)
        ledger.record(store, "report_arrived", node=cfg.node.name,
                      actor=str(meta.get("sender") or "?"), role="node", obj=rid,
                      case_id=case_id, detail={"version": doc.get("version"),
                                               "reader": doc.get("reader"),
                                               "verified": verified, "problems": problems[:5],
                                               "critical": critical}, con=con, at=now)
        if critical:
            ledger.record(store, "critical", node=cfg.node.name, actor=str(doc.get("reader")),
                          role="reader", obj=rid, case_id=case_id,
                          detail={"impression": str(doc.get("impression", ""))[:200]},
                          con=con, at=now)
    foreign = meta.get("audit")
    if isinstance(foreign, list):
        try:
            ledger.import_events(store, foreign, via=str(meta.get("sender")),
                                 trusted=trusted_centers(cfg))
        except ledger.ForeignEventError as exc:  # history is kept best effort, logged
            log.warning("report %s: audit events not imported: %s", rid, exc)
    if verified:
        log.info("report arrived case=%s report=%s version=%s reader=%s verified=yes", case_id,
                 rid, doc.get("version"), doc.get("reader"))
    else:
        log.error("report arrived case=%s report=%s verified=NO problems=%s", case_id, rid,
                  problems)
    if critical:
        log.warning("CRITICAL FINDING case=%s report=%s priority=%s impression=%r", case_id,
                    rid, meta.get("priority"), str(doc.get("impression", ""))[:120])
        _run_hook(cfg, case_id, rid, doc)
    if cfg.reports.deliver_to and sr_uid:
        from fenji.routing import outbox_db

        with store.atomic() as con:
            con.executemany("INSERT OR IGNORE INTO case_instances(case_id, sop_instance_uid) "
                            "VALUES (?, ?)", [(rid, u) for u in (sr_uid, pdf_uid) if u])
        from fenji.routing.egress import job_bundle_id

        outbox_db.enqueue(store, job_bundle_id(cfg.reports.deliver_to, rid), rid,
                          cfg.reports.deliver_to, 0, 0, now)
    return {"report_id": rid, "case_id": case_id, "verified": verified, "problems": problems,
            "critical": critical}


def _run_hook(cfg: Config, case_id: str, report_id: str, doc: dict[str, Any]) -> None:
    cmd = cfg.reports.critical_hook
    if not cmd:
        return
    env = {**os.environ, "FENJI_CASE_ID": case_id, "FENJI_REPORT_ID": report_id,
           "FENJI_PRIORITY": str(doc.get("priority") or ""),
           "FENJI_IMPRESSION": str(doc.get("impression") or "")[:500]}
    try:
        # Not waited for: a slow pager script must not hold up the receipt.
        subprocess.Popen(cmd, shell=True, env=env, cwd=str(cfg.data_dir),  # noqa: S602
                         stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        log.error("critical hook %r failed to start: %s", cmd, exc)


def report_delivered(store: Store, cfg: Config, report_id: str, target: str,
                     now: float) -> None:
    """The report's SR and PDF were accepted by the local PACS/HIS."""
    with store.atomic() as con:
        n = con.execute("UPDATE reports SET delivered_at = ?, delivered_to = ? WHERE "
                        "report_id = ? AND delivered_at IS NULL", (now, target,
                                                                   report_id)).rowcount
        if n:
            row = con.execute("SELECT case_id FROM reports WHERE report_id = ?",
                              (report_id,)).fetchone()
            ledger.record(store, "delivered", node=cfg.node.name, actor=cfg.node.name,
                          role="node", obj=report_id, case_id=row[0] if row else None,
                          detail={"to": target}, con=con, at=now)


def acknowledge(store: Store, cfg: Config, case_id: str, user: User,
                now: float | None = None) -> dict[str, Any]:
    """The requesting physician (or someone for them) has read the current report."""
    now = time.time() if now is None else now
    _case(store, case_id)
    if user.role not in ("physician", "technician", "operator"):
        raise Forbidden(f"user {user.name!r} has role {user.role!r}, which may not acknowledge "
                        "reports (physician, technician or operator)")
    rep = store.query_one("SELECT * FROM reports WHERE case_id = ? AND status = 'current' "
                          "ORDER BY version DESC LIMIT 1", (case_id,))
    if rep is None:
        raise ReadingError(f"case {case_id} has no report yet")
    with store.atomic() as con:
        states.move(con, case_id, "acknowledge", who=user.role, now=now)
        con.execute("UPDATE reports SET acknowledged_at = coalesce(acknowledged_at, ?), "
                    "acknowledged_by = coalesce(acknowledged_by, ?) WHERE report_id = ?",
                    (now, user.name, rep["report_id"]))
        ledger.record(store, "acknowledged", node=cfg.node.name, actor=user.name,
                      role=user.role, obj=rep["report_id"], case_id=case_id,
                      detail={"version": rep["version"]}, con=con, at=now)
    return {"case_id": case_id, "report_id": rep["report_id"], "version": rep["version"],
            "acknowledged_by": user.name, "acknowledged_at": now}


def reports_of(store: Store, case_id: str) -> list[dict[str, Any]]:
    """Every version of a case's reports, newest first, for display."""
    out = []
    for r in store.query("SELECT * FROM reports WHERE case_id = ? ORDER BY version DESC",
                         (case_id,)):
        doc = json.loads(r["report_json"])
        out.append({"report_id": r["report_id"], "version": r["version"],
                    "status": r["status"], "reader": r["reader"],
                    "reader_display": doc.get("reader_display"), "center": r["origin_node"],
                    "patient": doc.get("patient"),
                    "signed_at": doc.get("signed_at"), "findings": doc.get("findings"),
                    "impression": doc.get("impression"), "critical": bool(r["critical"]),
                    "supersedes": r["supersedes"], "superseded_by": r["superseded_by"],
                    "amendment_reason": r["amendment_reason"],
                    "received_at": r["received_at"], "returned_at": r["returned_at"],
                    "delivered_at": r["delivered_at"], "delivered_to": r["delivered_to"],
                    "acknowledged_at": r["acknowledged_at"],
                    "acknowledged_by": r["acknowledged_by"],
                    "sr_sop_instance_uid": r["sr_sop_instance_uid"],
                    "pdf_sop_instance_uid": r["pdf_sop_instance_uid"]})
    return out


def with_reports(store: Store, case: dict[str, Any]) -> dict[str, Any]:
    """A case as shown to people (CLI and API): quality, every report version, critical flag."""

    case.pop("manifest_json", None)
    case["quality"] = quality_of(store, case["case_id"])
    case["reports"] = reports_of(store, case["case_id"])
    case["critical"] = any(r["critical"] and r["status"] == "current" for r in case["reports"])
    return case


def export_report(store: Store, report_id: str, directory: Path) -> list[Path]:
    """Write a report's SR and PDF (Part-10) to ``directory`` (for `fenji report verify`)."""
    r = store.query_one("SELECT * FROM reports WHERE report_id = ?", (report_id,))
    if r is None:
        raise NotFound(f"no report {report_id!r}")
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for kind, uid in (("sr", r["sr_sop_instance_uid"]), ("pdf", r["pdf_sop_instance_uid"])):
        if not uid:
            continue
        row = store.query_one("SELECT sha256 FROM instances WHERE sop_instance_uid = ?", (uid,))
        if row:
            p = directory / f"report-v{r['version']}-{kind}.dcm"
            p.write_bytes(store.read_blob(row["sha256"]))
            out.append(p)
    return out


def report_pdf(store: Store, case_id: str, version: int | None = None) -> bytes:
    """The PDF bytes of a case's report (the current one, or ``version``)."""
    from pydicom import dcmread

    sql = "SELECT * FROM reports WHERE case_id = ? "
    args: tuple[Any, ...] = (case_id,)
    if version is not None:
        sql, args = sql + "AND version = ? ", (case_id, version)
    row = store.query_one(sql + "ORDER BY version DESC LIMIT 1", args)
    if row is None:
        raise NotFound(f"case {case_id} has no report"
                       + (f" version {version}" if version is not None else ""))
    inst = (store.get_instance(row["pdf_sop_instance_uid"]) if row["pdf_sop_instance_uid"]
            else None)
    if inst is None:
        raise NotFound(f"the PDF of report {row['report_id']} is not in this store")
    ds = dcmread(io.BytesIO(store.read_blob(inst["sha256"])))
    data = bytes(ds.EncapsulatedDocument)
    return data[:int(ds.get("EncapsulatedDocumentLength") or len(data))]
