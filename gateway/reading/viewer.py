"""Reports from a reader's own viewer (DESIGN.md §10): an SR or encapsulated PDF sent by
STOW-RS or the API is signed as the reader's report; one C-STOREd from a workstation's
AE title waits as an unsigned draft until the reader confirms it.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

from fenji.gateway.audit import ledger
from fenji.gateway.dicom import charset
from fenji.gateway.reading.claims import _case, worklist_case_for_study
from fenji.gateway.reading.errors import Forbidden, NotFound, ReadingError
from fenji.gateway.reading.report_return import _put, may_sign, submit_report

if TYPE_CHECKING:
    from fenji.gateway.access.users import User
    from fenji.gateway.config import Config
    from fenji.gateway.store.db import Store


def _viewer_text(store: Store, cfg: Config, user: User, data: bytes, case_id: str | None,
                 amendment_reason: str | None) -> tuple[str, str, str, dict[str, Any]]:
    """Parse a viewer's SR/PDF and check the reader may sign it now:
    (case_id, findings, impression, parsed).  Raises before anything is stored."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from fenji.gateway import reports

    try:
        ds = dcmread(io.BytesIO(data), force=True)
        # The report text in the viewer's character set (or the node's default).
        charset.decode_dataset(ds, cfg.dicom.default_character_set or None)
        parsed = reports.parse_viewer_report(ds)
    except (InvalidDicomError, ValueError, AttributeError, KeyError) as exc:
        raise ReadingError(f"not a DICOM SR or encapsulated PDF fenji can read: {exc}") from exc
    study = parsed["study_instance_uid"]
    if case_id is None:
        case_id = worklist_case_for_study(store, study, user)
        if case_id is None:
            raise NotFound(f"no case on the worklist for study {study}")
    case = _case(store, case_id)
    if case["study_instance_uid"] != study:
        raise ReadingError(f"the viewer's report references study {study}, but case {case_id} "
                           f"is study {case['study_instance_uid']}")
    findings = parsed.get("findings") or ""
    impression = parsed.get("impression") or ""
    if not findings and not impression and parsed.get("pdf_bytes"):
        findings = "See the attached PDF report from the reader's viewer."
    if not findings.strip() and not impression.strip():
        raise ReadingError(f"the viewer's {('SR' if parsed.get('pdf_bytes') is None else 'PDF')}"
                           f" {parsed.get('sop_instance_uid') or '?'} holds no report text")
    may_sign(store, cfg, case_id, user, amendment_reason=amendment_reason)
    return case_id, findings, impression, parsed


def report_from_viewer(store: Store, cfg: Config, user: User, data: bytes,
                       case_id: str | None = None, *, critical: bool = False,
                       amendment_reason: str | None = None) -> dict[str, Any]:
    """A reader's viewer sent a DICOM SR or encapsulated PDF for a study: sign it as the report.

    Only for a reader authenticated as a person (STOW-RS or the API with their
    token, or a draft they confirm).  The viewer's object is parsed for its text
    (SR) or kept as the report's PDF (encapsulated PDF); the report is then
    signed and sent exactly like one typed into the API, so the signature still
    binds it to the case's manifest and attestation.  The viewer's own object is
    kept in the store as received.
    """
    case_id, findings, impression, parsed = _viewer_text(store, cfg, user, data, case_id,
                                                         amendment_reason)
    # Checked before the viewer's object is kept: a refused report stores nothing.
    _put(store, cfg, data, f"viewer:{user.name}")
    return submit_report(store, cfg, case_id, user, findings=findings, impression=impression,
                         critical=critical or bool(parsed.get("critical")),
                         amendment_reason=amendment_reason,
                         pdf_from_viewer=parsed.get("pdf_bytes"))


def viewer_report_draft(store: Store, cfg: Config, user: User | None, data: bytes, *,
                        sop_class_uid: str, study_instance_uid: str, sop_instance_uid: str,
                        calling_ae: str, peer: str | None) -> dict[str, Any] | None:
    """A reading workstation C-STOREd an SR/PDF for a worklist study: keep it as a DRAFT.

    Over plain DICOM the calling AE title is a label anyone can type, not a
    credential: the object is stored and put on the worklist as a draft for the
    reader the AE is mapped to, unsigned, until that reader confirms it as a
    signed act with their own credentials (:func:`confirm_draft`).  The same
    refusals as for a signed report apply first (not claimed, other service).
    ``None``: not a report (stored as an ordinary instance).
    """
    case_id = _viewer_report_case(store, cfg, user, data, sop_class_uid, study_instance_uid)
    if case_id is None or user is None:
        return None
    case_id, _, _, _ = _viewer_text(store, cfg, user, data, case_id, None)
    _put(store, cfg, data, f"dimse:{calling_ae}")
    now = time.time()
    with store.atomic() as con:
        con.execute("INSERT OR IGNORE INTO report_drafts(sop_instance_uid, case_id, reader, "
                    "calling_ae, peer_address, received_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (sop_instance_uid, case_id, user.name, calling_ae, peer, now))
        ledger.record(store, "report_draft", node=cfg.node.name, actor=calling_ae,
                      role="workstation", obj=sop_instance_uid, case_id=case_id,
                      detail={"for_reader": user.name, "from": peer}, con=con, at=now)
    return {"draft": sop_instance_uid, "case_id": case_id, "reader": user.name}


def drafts_of(store: Store, case_id: str) -> list[dict[str, Any]]:
    return store.query("SELECT * FROM report_drafts WHERE case_id = ? ORDER BY received_at",
                       (case_id,))


def confirm_draft(store: Store, cfg: Config, case_id: str, sop_instance_uid: str, user: User,
                  *, critical: bool = False) -> dict[str, Any]:
    """The reader confirms a draft from their workstation: now it is signed, by them."""
    draft = store.query_one("SELECT * FROM report_drafts WHERE case_id = ? AND "
                            "sop_instance_uid = ?", (case_id, sop_instance_uid))
    if draft is None:
        raise NotFound(f"no report draft {sop_instance_uid} on case {case_id}")
    if draft["reader"] != user.name:
        raise Forbidden(f"the draft {sop_instance_uid} was sent for {draft['reader']}, not "
                        f"{user.name}: only they can sign it")
    if draft["report_id"]:
        raise ReadingError(f"draft {sop_instance_uid} was already signed as report "
                           f"{draft['report_id']}")
    inst = store.get_instance(sop_instance_uid)
    if inst is None:
        raise NotFound(f"draft {sop_instance_uid} is no longer in the store")
    row = report_from_viewer(store, cfg, user, store.read_blob(inst["sha256"]), case_id,
                             critical=critical)
    with store.atomic() as con:
        con.execute("UPDATE report_drafts SET report_id = ?, confirmed_at = ? WHERE "
                    "sop_instance_uid = ?", (row["report_id"], time.time(), sop_instance_uid))
    return row


# Text reports a viewer may send (not key-object selections or dose reports).
VIEWER_REPORT_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
})


def viewer_report_if_any(store: Store, cfg: Config, user: User | None, data: bytes, *,
                         sop_class_uid: str, study_instance_uid: str) -> dict[str, Any] | None:
    """A viewer stored (C-STORE or STOW-RS) an SR or PDF: is it a reader's report?

    At a center, a text SR or encapsulated PDF sent by a reader (the STOW-RS
    user, or the reader configured on the calling AE in ``[[remote_aes]]``) for
    a study on the worklist is that reader's report: it is signed and sent back
    exactly like one typed into the API (:func:`report_from_viewer`), and the
    report row is returned.  Anything else (no reader, another class, a study
    not on the worklist, fenji's own signed report coming back) returns
    ``None`` and is stored as an ordinary instance.  A report the reader may
    not sign raises :class:`ReadingError` before anything is stored.
    """
    case_id = _viewer_report_case(store, cfg, user, data, sop_class_uid, study_instance_uid)
    if case_id is None or user is None:
        return None
    return report_from_viewer(store, cfg, user, data, case_id)


def _viewer_report_case(store: Store, cfg: Config, user: User | None, data: bytes,
                        sop_class_uid: str, study_instance_uid: str) -> str | None:
    """The worklist case a viewer's SR/PDF from ``user`` is a report for, or ``None``
    when it is not one (not a center, not a reader, another class, a study not on
    the worklist, or fenji's own signed report coming back)."""
    if (cfg.node.role != "center" or user is None or user.role != "reader"
            or sop_class_uid not in VIEWER_REPORT_CLASSES):
        return None
    case_id = worklist_case_for_study(store, study_instance_uid, user)
    if case_id is None:
        return None
    from pydicom import dcmread

    from fenji.gateway import reports

    ds = dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    charset.decode_dataset(ds, cfg.dicom.default_character_set or None)
    if reports.has_signed_block(ds):
        return None  # fenji's own report (a C-MOVE back, a re-import): not a new one
    return case_id
