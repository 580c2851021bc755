"""Cases: the unit a reading center reads and reports (DESIGN.md §3 step 2).

A case is a study (or its new instances) released for one destination with a
priority, a service, the requesting physician, the clinical question and the
patient's consent reference.  Releasing records who or what released it
(``cli``, ``api``, ``timer``).  Instances that arrive after a case was released
travel as an **addendum** case pointing at it, never as a silently
incomplete study.

:func:`release` picks the instances, builds the bundle (manifest + STAT preview
+ encoded instances) durably under ``store/bundles/`` and returns it for the
outbox to enqueue.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fenji.gateway.audit import ledger
from fenji.gateway.cases import bundles, states
from fenji.gateway.cases import gate as qg
from fenji.gateway.cases.failure import ReleaseLock as _ReleaseLock
from fenji.gateway.cases.failure import fail_release as _fail_release
from fenji.gateway.cases.failure import recover_releases as recover_releases
from fenji.gateway.dicom import query as qr
from fenji.gateway.errors import LocalError, PeerError
from fenji.gateway.keys import canonical_json
from fenji.gateway.store.db import Store
from fenji.routing import encoding, outbox_db, wakeup

log = logging.getLogger(__name__)

PRIORITIES = states.PRIORITIES
SERVICES = states.SERVICES
ECG_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.9."  # waveform storage classes (PS3.4 B.5)


class CaseError(PeerError):
    """A case request that cannot be honoured as asked (the message says why)."""


class CaseHeld(CaseError):
    """The quality gate found the case unacceptable: it is held, not sent."""

    http_status = 409

    def __init__(self, case_id: str, reasons: list[str]) -> None:
        self.case_id = case_id
        self.reasons = reasons
        super().__init__(f"case {case_id} held by the quality gate: " + "; ".join(reasons[:5])
                         + (f" (+{len(reasons) - 5} more)" if len(reasons) > 5 else "")
                         + " -- fix and send again, or override with a reason")


@dataclass(frozen=True)
class Released:
    case_id: str
    kind: str  # case | addendum
    parent_case_id: str | None
    bundle_id: str
    bundle_path: Path
    bundle_bytes: int
    raw_bytes: int
    instances: int
    priority: str
    destination: str
    # STAT and urgent cases send a tiny preview bundle (key image or ECG strip)
    # ahead of the full one, so a reader sees something within seconds even
    # through store-and-forward relays: (bundle_id, path, size) or None.
    preview: tuple[str, Path, int] | None = None


def resolve_case_id(store: Store, given: str) -> str:
    """A full case ID, or a unique prefix of one (as git takes commit prefixes).

    An unknown ID is returned unchanged (the verb then says it has no such case);
    an ambiguous prefix raises :class:`CaseError` listing the candidates.
    """
    if not given or store.query_one("SELECT 1 AS x FROM cases WHERE case_id = ?", (given,)):
        return given
    if not all(c.isalnum() for c in given):
        return given
    rows = store.query("SELECT case_id FROM cases WHERE case_id LIKE ? ORDER BY case_id "
                       "LIMIT 6", (given + "%",))
    if len(rows) == 1:
        return str(rows[0]["case_id"])
    if len(rows) > 1:
        shown = ", ".join(str(r["case_id"]) for r in rows[:5])
        raise CaseError(f"case ID prefix {given!r} is ambiguous: {shown}"
                        f"{', …' if len(rows) > 5 else ''}; give more characters")
    return given


def _held_case(store: Store, case_id: str, operator: str, reason: str, doing: str,
               otherwise: str) -> dict[str, Any]:
    """The held case an operator acts on, with a name and a reason; else CaseError
    (``doing`` names the act, ``otherwise`` what is wrong with a case not held)."""
    if not operator.strip() or not reason.strip():
        raise CaseError(f"{doing} needs a named operator and a reason")
    case = store.query_one("SELECT * FROM cases WHERE case_id = ?", (case_id,))
    if case is None:
        raise CaseError(f"no case {case_id!r}")
    if case["state"] != "held":
        raise CaseError(f"case {case_id} is {case['state']}: {otherwise}")
    return case


def exclude_instance(store: Store, case_id: str, sop_instance_uid: str, *, operator: str,
                     reason: str, node: str, now: float | None = None) -> dict[str, Any]:
    """Drop one instance of a held case, with a ledger record of who and why.

    The instance stays in the store (nothing acknowledged is ever lost) but is
    left out of every later release of its study.  The next ``case send``
    releases what remains, through the gate again.
    """
    now = time.time() if now is None else now
    case = _held_case(store, case_id, operator, reason, "excluding an instance",
                      "only a held case can drop an instance (a released one has left; "
                      "send a correction as new UIDs)")
    member = store.query_one("SELECT 1 AS x FROM case_instances WHERE case_id = ? AND "
                             "sop_instance_uid = ?", (case_id, sop_instance_uid))
    if member is None and sop_instance_uid.isdigit():
        # The gate names instances by number ("instance 4: image blank"): take that too.
        hits = store.query("SELECT i.sop_instance_uid FROM case_instances ci JOIN instances i "
                           "ON i.sop_instance_uid = ci.sop_instance_uid WHERE ci.case_id = ? "
                           "AND i.instance_number = ?", (case_id, int(sop_instance_uid)))
        if len(hits) > 1:
            raise CaseError(f"case {case_id} has {len(hits)} instances numbered "
                            f"{sop_instance_uid}: give the SOP Instance UID")
        if hits:
            sop_instance_uid, member = str(hits[0]["sop_instance_uid"]), {"x": 1}
    if member is None:
        raise CaseError(f"instance {sop_instance_uid} is not part of case {case_id}")
    with store.atomic() as con:
        con.execute("INSERT INTO excluded_instances(sop_instance_uid, "
                    "study_instance_uid, case_id, excluded_by, reason, at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(sop_instance_uid) DO UPDATE SET "
                    "study_instance_uid = excluded.study_instance_uid, "
                    "case_id = excluded.case_id, excluded_by = excluded.excluded_by, "
                    "reason = excluded.reason, at = excluded.at",
                    (sop_instance_uid, case["study_instance_uid"], case_id, operator, reason,
                     now))
        ledger.record(store, "excluded", node=node or "?", actor=operator, role="technician",
                      obj=sop_instance_uid, case_id=case_id,
                      detail={"reason": reason, "study": case["study_instance_uid"]},
                      con=con, at=now)
    log.info("case instance excluded case=%s sop=%s by=%s", case_id, sop_instance_uid,
             operator)
    left = store.query_one(
        "SELECT count(*) AS n FROM case_instances ci WHERE ci.case_id = ? AND NOT EXISTS ("
        "SELECT 1 FROM excluded_instances x WHERE x.sop_instance_uid = ci.sop_instance_uid)",
        (case_id,))
    return {"case_id": case_id, "excluded": sop_instance_uid, "by": operator, "reason": reason,
            "remaining": int(left["n"]) if left else 0,
            "study_instance_uid": case["study_instance_uid"]}


def next_hop(cfg: Any, destination: str) -> str | None:
    """A configured peer is its own next hop; otherwise transfer.default_destination
    (a relay) carries the case on (DESIGN.md §1: edge, relay, center)."""
    if cfg.peer(destination) is not None:
        return str(destination)
    via = cfg.transfer.default_destination
    return str(via) if via and cfg.peer(via) is not None else None


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """The hash a report binds to: SHA-256 of the canonical JSON of the full bundle's manifest."""
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def note_received(con: Any, manifest: dict[str, Any], now: float) -> None:
    """Keep what the reader will be bound to: the manifest as received, its hash, the sender."""
    case = manifest.get("case", {})
    con.execute("UPDATE cases SET sending_node = coalesce(sending_node, ?), "
                "received_at = coalesce(received_at, ?), manifest_json = ?, "
                "manifest_sha256 = ? WHERE case_id = ?",
                (case.get("sender"), now, json.dumps(manifest, sort_keys=True),
                 manifest_sha256(manifest), case.get("case_id")))


def record_received(store: Store, manifest: dict[str, Any], node_name: str,
                    now: float | None = None, instances: list[str] | None = None,
                    sender: str | None = None,
                    trusted: Mapping[str, Any] | None = None) -> str | None:
    """Note a case that arrived in a bundle (idempotent: a re-sent bundle changes nothing).

    ``sender`` is the node that authenticated the upload: it, not the manifest's
    ``sender`` field, is who delivered the case (the manifest's claim is kept
    as ``claimed_sender`` when they differ).  One transaction: the case, its
    instances, its state (:mod:`states`: preview, received, forwarding), the
    worklist entry, the sender's attestation and the ledger's "arrived".
    Returns the case's state at this node.
    """
    case = dict(manifest.get("case", {}))
    claimed = case.get("sender")
    if sender is not None:
        case["sender"] = sender
    if not case.get("case_id"):
        return None
    now = time.time() if now is None else now
    cid = str(case["case_id"])
    kind = case.get("bundle_kind")
    event = ("preview" if kind == "preview" else "withdraw" if kind == bundles.WITHDRAWAL
             else "arrive" if case.get("destination") == node_name else "pass")
    att = case.get("attestation")
    with store.atomic() as con:
        if event == "withdraw":
            _check_withdrawal(con, cid, case, sender)
        if con.execute("SELECT 1 FROM cases WHERE case_id = ?", (cid,)).fetchone():
            state = states.move(con, cid, event, who=states.NODE, now=now)
        else:
            state = states.initial(event, states.NODE)
            con.execute(
                "INSERT INTO cases(case_id, study_instance_uid, kind, parent_case_id, "
                "priority, service, destination, requesting_physician, clinical_question, "
                "consent_ref, state, released_by, released_at, created_at, updated_at) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, case.get("study_instance_uid", ""), case.get("kind", "case"),
                 case.get("parent_case_id"), case.get("priority", "routine"),
                 case.get("service", "imaging"), case.get("destination", ""),
                 case.get("requesting_physician"), case.get("clinical_question"),
                 case.get("consent_ref"), state, case.get("released_by"),
                 case.get("released_at"), now, now))
        if instances:
            con.executemany("INSERT OR IGNORE INTO case_instances(case_id, sop_instance_uid) "
                            "VALUES (?, ?)", [(cid, uid) for uid in instances])
        full = event not in ("preview", "withdraw") and kind != "report"
        if event == "withdraw":
            ledger.record(store, "withdrawn", node=node_name, actor=str(sender or "?"),
                          role="node", obj=str(case.get("bundle_id") or cid), case_id=cid,
                          detail={"state": state, "reason": str(case.get("reason"))[:500],
                                  "withdraws": case.get("withdraws")}, con=con, at=now)
        fresh = con.execute("SELECT manifest_sha256 FROM cases WHERE case_id = ?",
                            (cid,)).fetchone()
        if full and fresh is not None and fresh[0] is None:  # first arrival of the full bundle
            note_received(con, manifest, now)
            if event == "arrive":  # on this node's worklist
                states.move(con, cid, "list", who=states.NODE, now=now, column=states.READ)
            ledger.record(store, "arrived", node=node_name, actor=str(case.get("sender") or "?"),
                          role="node", obj=str(case.get("bundle_id") or cid), case_id=cid,
                          detail={"instances": len(instances or []), "state": state,
                                  "priority": case.get("priority"),
                                  **({"claimed_sender": claimed}
                                     if claimed != case.get("sender") else {})},
                          con=con, at=now)
        if isinstance(att, dict) and full:
            # The sending hospital's signed statement travels with the case and is
            # kept as received (fenji quality show at the center prints it).
            _save_quality(con, cid, {"verdict": att.get("verdict"),
                                     "reasons": att.get("reasons", []),
                                     "received_from": case.get("sender")}, att, now)
    foreign = case.get("audit")
    if full and isinstance(foreign, list) and foreign and state == "received":
        try:
            ledger.import_events(store, foreign, via=str(case.get("sender")), trusted=trusted)
        except ledger.ForeignEventError as exc:  # history is best effort, logged
            log.warning("case %s: audit events not imported: %s", cid, exc)
    return state


class WithdrawalRefused(CaseError):
    """A withdrawal from a node other than the one that delivered the case's preview."""

    http_status = 403


def _check_withdrawal(con: Any, case_id: str, case: dict[str, Any], sender: str | None) -> None:
    """Only the node that delivered a preview may withdraw it (a preview not here yet:
    the withdrawal overtook it, and its case id is known only to its sender)."""
    got = con.execute("SELECT sender FROM uploads WHERE bundle_id = ?",
                      (str(case.get("withdraws") or ""),)).fetchone()
    if got is not None and sender is not None and got[0] != sender:
        raise WithdrawalRefused(f"case {case_id}: withdrawal from node {sender!r}, but its "
                                f"preview came from {got[0]!r}")


def enqueue_release(store: Store, rel: Released, hop: str, now: float) -> None:
    """Queue a released case: its preview bundle first (same priority, older), then the rest.

    Idempotent by bundle id (a release given its ``hop`` has queued them already).
    """
    if rel.preview is not None:
        pid, _, psize = rel.preview
        outbox_db.enqueue(store, pid, rel.case_id, hop, PRIORITIES[rel.priority], psize, now)
    outbox_db.enqueue(store, rel.bundle_id, rel.case_id, hop, PRIORITIES[rel.priority],
                      rel.bundle_bytes, now + 1e-6)


# Objects an ECG cart sends along with its waveforms (its own printout as a PDF,
# its measurements as an SR): they do not make an ECG study an imaging one.
ECG_ATTACHMENTS = frozenset({
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",  # Basic/Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
})


def service_of(sop_classes: list[str]) -> str:
    """ecg when the study holds ECG waveforms and nothing but their attachments."""
    waveforms = [c for c in sop_classes if c.startswith(ECG_SOP_PREFIX)]
    others = [c for c in sop_classes if not c.startswith(ECG_SOP_PREFIX)
              and c not in ECG_ATTACHMENTS]
    return "ecg" if waveforms and not others else "imaging"


# The named steps of a release, in order (tests/gateway/test_release_crash.py kills a
# release at each): nothing is recorded before "recorded", and "recorded" is inside
# the one transaction, before its COMMIT.
#
# A STAT or urgent release with a preview and a next hop commits twice: the preview
# is queued (the case "releasing") before the full bundle is encoded, then the full
# bundle is recorded (the case "released").  A crash between the two leaves a
# "releasing" case that :func:`recover_releases` records as "failed".  A routine
# release skips the preview steps and has one transaction.
RELEASE_STEPS = ("selected", "gated", "preview_renamed", "preview_recorded",
                 "preview_committed", "bundle_written", "bundle_renamed", "recorded",
                 "committed")
# A test sets this to see (and stop at) each step; None in a running node.
on_step: Callable[[str, dict[str, Any]], None] | None = None


def _step(name: str, **info: Any) -> None:
    if on_step is not None:
        on_step(name, info)


def release(store: Store, study_instance_uid: str, *, destination: str, priority: str = "routine",
            service: str | None = None, requesting_physician: str | None = None,
            clinical_question: str | None = None, consent_ref: str | None = None,
            released_by: str = "cli", sender_node: str = "", effort: str = "fast",
            gate_key: Any = None, operator: str = "", now: float | None = None,
            thresholds: tuple[Any, Any] = (None, None), hop: str | None = None) -> Released:
    """Release ``study_instance_uid`` (or its new instances) to ``destination``.

    With ``gate_key`` (the node's Ed25519 key) the quality gate runs first: an
    unacceptable case is recorded as ``held`` and :class:`CaseHeld` is raised;
    otherwise the signed attestation goes into the bundle manifest.

    The bundle is built first (under a temporary name, then renamed into
    ``bundles/``); then ONE transaction records the release: an earlier held
    case of the study superseded, the case, its quality report, the manifest
    hash the build returned, the ledger's events and, with ``hop``, the outbox
    jobs.  A crash anywhere leaves the case unreleased, or released with its
    manifest hash and its bundle, never in between.
    """
    now = time.time() if now is None else now
    if priority not in PRIORITIES:
        raise CaseError(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    if service is not None and service not in SERVICES:
        raise CaseError(f"service {service!r} is not one of {', '.join(SERVICES)}")
    if released_by not in ("cli", "api", "timer"):
        raise CaseError(f"released_by {released_by!r} is not cli, api or timer")
    rows = store.query(_UNRELEASED.format(_COLS) + " ORDER BY i.instance_number, "
                       "i.sop_instance_uid", (study_instance_uid, destination))
    if not rows:
        known = store.query_one("SELECT count(*) AS n FROM instances WHERE study_instance_uid = ?",
                                (study_instance_uid,))
        if not known or not known["n"]:
            raise CaseError(f"study {study_instance_uid} is not in the store")
        raise CaseError(f"every instance of study {study_instance_uid} was already released to "
                        f"{destination}; nothing new to send")
    parent = store.query_one(
        "SELECT case_id FROM cases WHERE study_instance_uid = ? AND destination = ? "
        "AND kind = 'case' AND state NOT IN ('held', 'superseded', 'failed') "
        "ORDER BY created_at LIMIT 1",
        (study_instance_uid, destination))
    kind = "addendum" if parent else "case"
    parent_id = parent["case_id"] if parent else None
    service = service or service_of([r["sop_class_uid"] for r in rows])
    case_id = uuid.uuid4().hex
    bundle_id = uuid.uuid4().hex
    case_meta = {
        "case_id": case_id, "kind": kind, "parent_case_id": parent_id,
        "study_instance_uid": study_instance_uid, "priority": priority, "service": service,
        "destination": destination, "sender": sender_node,
        "requesting_physician": requesting_physician, "clinical_question": clinical_question,
        "consent_ref": consent_ref, "released_by": released_by, "released_at": now,
        "attestation": None,
    }
    _step("selected", case_id=case_id)
    actor, role = _actor(operator, released_by)
    report = attestation = None
    if gate_key is not None:
        left_out = store.query("SELECT i.sha256 FROM excluded_instances x JOIN instances i "
                               "ON i.sop_instance_uid = x.sop_instance_uid "
                               "WHERE x.study_instance_uid = ?", (study_instance_uid,))
        report = qg.assess([store.read_blob(r["sha256"]) for r in rows], *thresholds,
                           excluded=[store.read_blob(r["sha256"]) for r in left_out])
        verdict = {"verdict": report["verdict"], "reasons": report["reasons"][:10]}
        if report["verdict"] == qg.UNACCEPTABLE:
            with store.atomic() as con:  # it replaces an earlier held case of the study
                _supersede_held(con, study_instance_uid, destination, now)
                _insert_case(con, case_meta, rows, states.initial("hold", states.NODE), now)
                _save_quality(con, case_id, report, None, now)
                for k in ("quality_verdict", "held"):
                    ledger.record(store, k, node=sender_node or "?", actor=actor, role=role,
                                  obj=case_id, case_id=case_id, detail=verdict, con=con, at=now)
            log.warning("case held case=%s study=%s reasons=%d first=%s", case_id,
                        study_instance_uid, len(report["reasons"]), report["reasons"][:1])
            raise CaseHeld(case_id, report["reasons"])
        attestation = qg.attest(report, case_id=case_id, study_instance_uid=study_instance_uid,
                                node=sender_node, operator=operator or "unknown", key=gate_key,
                                now=now)
        case_meta["attestation"] = attestation
    _step("gated", case_id=case_id)
    case_meta["audit"] = _audit_of(store, case_id)
    if hop is not None and priority in ("stat", "urgent") and not bundles.preview_inline(rows):
        preview = bundles.stage_preview(store, rows, case_meta, _step)
        if preview is not None:
            return _release_preview_first(store, rows, case_meta, preview, report, attestation,
                                          actor=actor, role=role, hop=hop, effort=effort,
                                          now=now)
    built = bundles.build_bundle(store, rows, case_meta, bundle_id, priority, effort, _step)
    try:
        with store.atomic() as con:
            _claim_instances(store, con, case_meta, rows, states.initial("release", role),
                             report, attestation, actor, role, now)
            rel = _record_release(store, con, built, case_meta, len(rows), sender_node, actor,
                                  role, released_by, hop, now)
            _step("recorded", case_id=case_id, bundle=str(built.path))
    except BaseException:
        built.discard()
        raise
    _step("committed", case_id=case_id, bundle=str(built.path))
    _wake_sender(store, hop)
    _log_released(rel, study_instance_uid, released_by)
    return rel


class ReleaseFailed(LocalError):
    """A preview-first release whose full bundle could not be made after its preview
    was queued (this node's fault): the case is recorded as ``failed`` (ledger:
    ``release_failed``), its instances free for the next release."""


def _release_preview_first(store: Store, rows: list[dict[str, Any]], meta: dict[str, Any],
                           preview: tuple[str, Path, int], report: dict[str, Any] | None,
                           attestation: dict[str, Any] | None, *, actor: str, role: str,
                           hop: str, effort: str, now: float) -> Released:
    """Queue the preview and the full bundle, wake the sender, then encode the full
    bundle while it is sent, and record it.

    Two transactions, each whole: the first records the case as ``releasing`` with
    its instances, quality report, the preview's outbox job and the full bundle's
    job, unsealed (:mod:`fenji.routing.encoding`: the sender sends what is encoded
    but declares no length, so the receiver finalizes nothing); the second moves it
    to ``released`` with the full manifest's hash, the ledger's "released", and
    seals the full bundle's job.  If the full bundle cannot be made the case is moved to
    ``failed`` with the reason (its instances free for the next release); if the
    process dies between them, :func:`recover_releases` does the same at the next
    start.  The index's hold on the case (:class:`_ReleaseLock`), from before the
    first commit to after the last, tells a live release from a dead one, whichever
    process or machine of a center runs it.
    """
    case_id = str(meta["case_id"])
    pid, ppath, psize = preview
    full_id = uuid.uuid4().hex
    lock = _ReleaseLock(store, case_id)
    try:
        try:
            with store.atomic() as con:
                _claim_instances(store, con, meta, rows, states.initial("begin_release", role),
                                 report, attestation, actor, role, now)
                outbox_db.enqueue(store, pid, case_id, hop, PRIORITIES[str(meta["priority"])],
                                  psize, now)
                outbox_db.enqueue(store, full_id, case_id, hop,
                                  PRIORITIES[str(meta["priority"])], encoding.ENCODING,
                                  now + 1e-6)
                _step("preview_recorded", case_id=case_id, bundle=str(ppath))
        except BaseException:
            with contextlib.suppress(OSError):
                ppath.unlink()
            raise
        _step("preview_committed", case_id=case_id, bundle=str(ppath))
        _wake_sender(store, hop)  # the preview's first byte leaves now, not after the encode
        try:
            built = bundles.stream_full(store, rows, meta, full_id, effort, _step)
        except BaseException as exc:
            why = f"the full bundle could not be made: {type(exc).__name__}: {exc}"
            _fail_release(store, case_id, why, now=time.time())
            if isinstance(exc, Exception):
                raise ReleaseFailed(f"case {case_id}: its preview was queued but {why}; the "
                                    "case is recorded as failed: send the study again") from exc
            raise
        try:
            with store.atomic() as con:
                states.move(con, case_id, "release", who=role, now=now)
                rel = _record_release(store, con, built, meta, len(rows), str(meta["sender"]),
                                      actor, role, str(meta["released_by"]), hop, now,
                                      preview=preview)
                _step("recorded", case_id=case_id, bundle=str(built.path))
        except BaseException as exc:
            built.discard()
            _fail_release(store, case_id, f"the full bundle could not be recorded: {exc}",
                          now=time.time())
            raise
    finally:
        lock.release()
    _step("committed", case_id=case_id, bundle=str(built.path))
    _wake_sender(store, hop)
    _log_released(rel, str(meta["study_instance_uid"]), str(meta["released_by"]))
    return rel


def _wake_sender(store: Store, hop: str | None) -> None:
    """After a commit that queued something: wake the sender, in whatever process."""
    if hop is not None:
        wakeup.wake(store)


def _log_released(rel: Released, study_instance_uid: str, released_by: str) -> None:
    log.info("case released case=%s kind=%s study=%s dest=%s priority=%s instances=%d "
             "raw_bytes=%d bundle_bytes=%d by=%s", rel.case_id, rel.kind, study_instance_uid,
             rel.destination, rel.priority, rel.instances, rel.raw_bytes, rel.bundle_bytes,
             released_by)


def _claim_instances(store: Store, con: Any, meta: dict[str, Any],
                     rows: list[dict[str, Any]], state: str, report: dict[str, Any] | None,
                     attestation: dict[str, Any] | None, actor: str, role: str,
                     now: float) -> None:
    """Inside a release's transaction: the case row taking its instances (refused if
    another release took some meanwhile), an earlier held case superseded, the gate's
    report and the ledger's verdict."""
    study, dest, case_id = meta["study_instance_uid"], meta["destination"], meta["case_id"]
    # Instances another release took meanwhile would go twice: refuse.
    taken = con.execute(_UNRELEASED.format("count(*)"), (study, dest)).fetchone()[0]
    if taken != len(rows):
        raise CaseError(f"study {study} was released to {dest} by someone else meanwhile; "
                        "send again for what is left")
    _supersede_held(con, study, dest, now)
    _insert_case(con, meta, rows, state, now)
    if report is not None:
        _save_quality(con, case_id, report, attestation, now)
        ledger.record(store, "quality_verdict", node=meta["sender"] or "?",
                      actor=actor, role=role, obj=case_id, case_id=case_id,
                      detail={"verdict": report["verdict"], "reasons": report["reasons"][:10]},
                      con=con, at=now)


# The instances of a study not yet in a live case for a destination, nor excluded.
_COLS = ("i.sop_instance_uid, i.sop_class_uid, i.sha256, i.size, i.instance_number, "
         "i.specific_character_set, i.charset_source")
_UNRELEASED = (
    "SELECT {} FROM instances i WHERE i.study_instance_uid = ? AND NOT EXISTS ("
    " SELECT 1 FROM case_instances ci JOIN cases c ON c.case_id = ci.case_id"
    " WHERE ci.sop_instance_uid = i.sop_instance_uid AND c.destination = ?"
    " AND c.state NOT IN ('held', 'superseded', 'failed'))"
    " AND NOT EXISTS (SELECT 1 FROM excluded_instances x"
    " WHERE x.sop_instance_uid = i.sop_instance_uid)")


def _supersede_held(con: Any, study_instance_uid: str, destination: str, now: float) -> None:
    """An earlier held case of the study is replaced by the one being recorded."""
    for (held,) in con.execute("SELECT case_id FROM cases WHERE study_instance_uid = ? AND "
                               "destination = ? AND state = 'held'",
                               (study_instance_uid, destination)).fetchall():
        states.move(con, held, "supersede", who=states.NODE, now=now)


def _actor(operator: str, released_by: str) -> tuple[str, str]:
    """Who a release is recorded against in the ledger (and moves the case state)."""
    if released_by == "timer":
        return "stable-study timer", states.NODE
    return (operator or f"{released_by} user"), "technician"


def _audit_of(store: Store, case_id: str) -> list[dict[str, Any]]:
    """This node's ledger events for a case, to travel in the bundle's manifest."""
    return list(ledger.export_case(store, case_id))


def _record_release(store: Store, con: Any, built: bundles.Built, meta: dict[str, Any], n: int,
                    node: str, actor: str, role: str, released_by: str, hop: str | None,
                    now: float, preview: tuple[str, Path, int] | None = None) -> Released:
    """Inside the release's transaction: the manifest the build returned and its hash
    (a returning report must match it), the ledger's "released", the outbox jobs."""
    digest = manifest_sha256(built.manifest)
    con.execute("UPDATE cases SET manifest_json = ?, manifest_sha256 = ? WHERE case_id = ?",
                (json.dumps(built.manifest, sort_keys=True), digest, meta["case_id"]))
    case_id = str(meta["case_id"])
    ledger.record(store, "released", node=node or "?", actor=actor, role=role, obj=case_id,
                  case_id=case_id, detail={"released_by": released_by,
                                           "priority": meta["priority"],
                                           "destination": meta["destination"],
                                           "instances": n, "manifest_sha256": digest},
                  con=con, at=now)
    rel = Released(case_id, str(meta["kind"]), meta["parent_case_id"], built.bundle_id,
                   built.path, built.size, built.raw_bytes, n, str(meta["priority"]),
                   str(meta["destination"]), preview or built.preview)
    if hop is not None:
        enqueue_release(store, rel, hop, now)  # a savepoint of this transaction
    return rel


def _insert_case(con: Any, meta: dict[str, Any], rows: list[dict[str, Any]], state: str,
                 now: float) -> None:
    con.execute(
        "INSERT INTO cases(case_id, study_instance_uid, kind, parent_case_id, priority, "
        "service, destination, requesting_physician, clinical_question, consent_ref, state, "
        "released_by, released_at, created_at, updated_at) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (meta["case_id"], meta["study_instance_uid"], meta["kind"], meta["parent_case_id"],
         meta["priority"], meta["service"], meta["destination"],
         meta["requesting_physician"], meta["clinical_question"], meta["consent_ref"], state,
         meta["released_by"], None if state == "held" else now, now, now))
    con.executemany("INSERT INTO case_instances(case_id, sop_instance_uid) VALUES (?, ?)",
                    [(meta["case_id"], r["sop_instance_uid"]) for r in rows])


def _save_quality(con: Any, case_id: str, report: dict[str, Any],
                  attestation: dict[str, Any] | None, now: float) -> None:
    con.execute("INSERT INTO quality(case_id, verdict, report_json, attestation_json, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(case_id) DO "
                "UPDATE SET verdict = excluded.verdict, report_json = excluded.report_json, "
                "attestation_json = excluded.attestation_json, "
                "updated_at = excluded.updated_at",
                (case_id, report["verdict"], json.dumps(report, default=str),
                 json.dumps(attestation) if attestation else None, now, now))


def override(store: Store, case_id: str, *, operator: str, reason: str, gate_key: Any,
             sender_node: str, effort: str = "fast", now: float | None = None,
             operator_role: str = "technician", hop: str | None = None) -> Released:
    """Release a held case anyway: a named operator, a reason, a signed attestation.

    As :func:`release`: the bundle first, then one transaction (the move from held
    to released, the attestation, the manifest hash, the ledger, the outbox jobs).
    """
    now = time.time() if now is None else now
    case = _held_case(store, case_id, operator, reason, "an override",
                      "not held: nothing to override")
    states.transition(states.STATE, "held", "override", operator_role, case_id=case_id)
    q = store.query_one("SELECT report_json FROM quality WHERE case_id = ?", (case_id,))
    report = json.loads(q["report_json"]) if q else {"verdict": qg.UNACCEPTABLE, "reasons": []}
    rows = store.query("SELECT i.sop_instance_uid, i.sha256, i.size, i.specific_character_set, "
                       "i.charset_source FROM case_instances ci JOIN "
                       "instances i ON i.sop_instance_uid = ci.sop_instance_uid WHERE "
                       "ci.case_id = ? ORDER BY i.instance_number, i.sop_instance_uid",
                       (case_id,))
    att = qg.attest(report, case_id=case_id, study_instance_uid=case["study_instance_uid"],
                    node=sender_node, operator=operator, key=gate_key, override_reason=reason,
                    now=now)
    meta = {k: case[k] for k in ("case_id", "kind", "parent_case_id", "study_instance_uid",
                                 "priority", "service", "destination", "requesting_physician",
                                 "clinical_question", "consent_ref", "released_by")}
    meta.update(sender=sender_node, released_at=now, attestation=att)
    meta["audit"] = _audit_of(store, case_id)
    built = bundles.build_bundle(store, rows, meta, uuid.uuid4().hex, case["priority"],
                                 effort, _step)
    try:
        with store.atomic() as con:
            states.move(con, case_id, "override", who=operator_role, now=now,
                        also={"released_at": now})
            _save_quality(con, case_id, report, att, now)
            ledger.record(store, "override", node=sender_node or "?", actor=operator,
                          role=operator_role, obj=case_id, case_id=case_id,
                          detail={"reason": reason, "verdict": report.get("verdict")},
                          con=con, at=now)
            rel = _record_release(store, con, built, meta, len(rows), sender_node, operator,
                                  operator_role, "override", hop, now)
    except BaseException:
        built.discard()
        raise
    log.warning("case override case=%s operator=%s reason=%s", case_id, operator, reason)
    return rel


def quality_of(store: Store, case_id: str) -> dict[str, Any] | None:

    q = store.query_one("SELECT * FROM quality WHERE case_id = ?", (case_id,))
    if q is None:
        return None
    return {"case_id": case_id, "verdict": q["verdict"], "report": json.loads(q["report_json"]),
            "attestation": json.loads(q["attestation_json"]) if q["attestation_json"] else None}


def get_case(store: Store, case_id: str) -> dict[str, Any] | None:
    case = store.query_one("SELECT * FROM cases WHERE case_id = ?", (case_id,))
    if case is None:
        return None
    case["instances"] = [r["sop_instance_uid"] for r in store.query(
        "SELECT sop_instance_uid FROM case_instances WHERE case_id = ?", (case_id,))]
    case.update(qr.study_summary(store, case["study_instance_uid"]))
    return case


def list_cases(store: Store, *, state: str | None = None) -> list[dict[str, Any]]:
    sql = ("SELECT c.*, (SELECT count(*) FROM case_instances ci WHERE ci.case_id = c.case_id) "
           "AS n_instances, st.patient_id, st.patient_name, st.study_description "
           "FROM cases c LEFT JOIN studies st ON st.study_instance_uid = c.study_instance_uid")
    args: tuple[Any, ...] = ()
    if state:
        sql += " WHERE c.state = ?"
        args = (state,)
    return store.query(sql + " ORDER BY c.created_at", args)


def set_state(store: Store, case_id: str, state: str, *, who: str, now: float | None = None,
              column: str = states.STATE) -> str:
    """Move a case to ``state`` by whichever event of the table leads there for ``who``.

    Raises :class:`~fenji.gateway.cases.states.UnknownState` for a state outside the
    table and :class:`~fenji.gateway.cases.states.IllegalMove` (naming both states)
    for a move it lacks; the check and the write are one transaction.
    """
    now = time.time() if now is None else now
    if column not in states.COLUMNS:
        raise states.UnknownState(column, state)
    with store.atomic() as con:
        row = con.execute(f"SELECT {column} FROM cases WHERE case_id = ?",
                          (case_id,)).fetchone()
        if row is None:
            raise states.NoSuchCase(f"no case {case_id!r} at this node")
        event = states.event_for(column, row[0], state, who, case_id=case_id)
        return states.move(con, case_id, event, who=who, now=now, column=column)


def stable_studies(store: Store, destination: str, stable_s: float, now: float) -> list[str]:
    """Studies with no new instance for ``stable_s`` and instances not yet in any
    live case for ``destination``: what the stable-study timer releases."""
    rows = store.query(
        "SELECT s.study_instance_uid FROM studies s WHERE s.last_received_at <= ? AND EXISTS ("
        " SELECT 1 FROM instances i WHERE i.study_instance_uid = s.study_instance_uid"
        " AND NOT EXISTS (SELECT 1 FROM case_instances ci JOIN cases c ON c.case_id = "
        " ci.case_id WHERE ci.sop_instance_uid = i.sop_instance_uid AND c.destination = ?))"
        " AND NOT EXISTS (SELECT 1 FROM cases c WHERE c.study_instance_uid = "
        " s.study_instance_uid AND c.destination = ? AND c.state = 'held')"
        " ORDER BY s.last_received_at", (now - stable_s, destination, destination))
    return [r["study_instance_uid"] for r in rows]
