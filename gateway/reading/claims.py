"""The center's worklist and claims (DESIGN.md §3 step 8).

At a center every received case is on the worklist (``read_state``: new, claimed,
reported, amended; :mod:`fenji.gateway.cases.states` moves it).  A reader whose
services include the case's claims it; an unused claim expires after
``reading.claim_ttl_s``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from fenji.gateway.audit import ledger
from fenji.gateway.cases import states
from fenji.gateway.cases.case import PRIORITIES
from fenji.gateway.keys import canonical_json
from fenji.gateway.reading.errors import Forbidden, NotFound, ReadingError

if TYPE_CHECKING:
    from fenji.gateway.access.users import User
    from fenji.gateway.config import Config
    from fenji.gateway.store.db import Store

log = logging.getLogger(__name__)


def _expire_claims(store: Store, cfg: Config, now: float) -> None:
    rows = store.query("SELECT case_id, claimed_by FROM cases WHERE read_state = 'claimed' "
                       "AND claimed_until < ?", (now,))
    for r in rows:
        with store.atomic() as con:
            if con.execute("SELECT 1 FROM cases WHERE case_id = ? AND read_state = 'claimed' "
                           "AND claimed_until < ?", (r["case_id"], now)).fetchone() is None:
                continue  # renewed or signed meanwhile
            states.move(con, r["case_id"], "expire", who=states.NODE, now=now,
                        column=states.READ, also={"claimed_by": None, "claimed_until": None})
            ledger.record(store, "unclaimed", node=cfg.node.name, actor=r["claimed_by"],
                          role="reader", obj=r["case_id"], case_id=r["case_id"],
                          detail={"why": "claim expired"}, con=con, at=now)
        log.info("claim expired case=%s reader=%s", r["case_id"], r["claimed_by"])


def worklist(store: Store, cfg: Config, *, user: User | None = None,
             state: str | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """Received cases, STAT first, then longest waiting.  A reader sees their services only."""
    now = time.time() if now is None else now
    _expire_claims(store, cfg, now)
    rows = store.query(
        "SELECT c.*, q.verdict AS quality_verdict, q.attestation_json, "
        "(SELECT count(*) FROM case_instances ci WHERE ci.case_id = c.case_id) AS n_instances, "
        "(SELECT count(*) FROM cases a WHERE a.parent_case_id = c.case_id) AS n_addenda, "
        "(SELECT max(version) FROM reports r WHERE r.case_id = c.case_id) AS report_version, "
        "st.patient_id AS st_patient_id, st.patient_name AS st_patient_name, "
        "st.study_description AS st_study_description "
        "FROM cases c LEFT JOIN quality q ON q.case_id = c.case_id "
        "LEFT JOIN studies st ON st.study_instance_uid = c.study_instance_uid "
        "WHERE c.read_state IS NOT NULL AND c.kind = 'case'")
    out = []
    for r in rows:
        if user is not None and user.role == "reader" and r["service"] not in user.services:
            continue
        if state and r["read_state"] != state:
            continue
        att = json.loads(r["attestation_json"]) if r["attestation_json"] else None
        out.append({
            "case_id": r["case_id"], "priority": r["priority"], "service": r["service"],
            "state": r["read_state"], "waiting_s": round(now - (r["received_at"] or now), 1),
            "received_at": r["received_at"], "sending_hospital": r["sending_node"],
            "requesting_physician": r["requesting_physician"],
            "clinical_question": r["clinical_question"],
            "study_instance_uid": r["study_instance_uid"], "instances": r["n_instances"],
            # Whose case it is, so that nobody signs for the wrong patient: Unicode,
            # person names with their groups ("Wang^XiaoDong=王^小东").
            "patient_id": r["st_patient_id"], "patient_name": r["st_patient_name"],
            "study_description": r["st_study_description"],
            "addenda": r["n_addenda"],
            "quality": {"verdict": r["quality_verdict"],
                        "attested_by": att.get("operator") if att else None,
                        "attested_at": att.get("time") if att else None,
                        "override": (att.get("override_reason") or att.get("override"))
                        if att else None,
                        "attestation_sha256": hashlib.sha256(canonical_json(att)).hexdigest()
                        if att else None},
            "claimed_by": r["claimed_by"],
            "claim_expires_in_s": round(r["claimed_until"] - now, 1)
            if r["read_state"] == "claimed" and r["claimed_until"] else None,
            "report_version": r["report_version"],
        })

    out.sort(key=lambda c: (PRIORITIES.get(c["priority"], 9), -c["waiting_s"]))
    return out


def _case(store: Store, case_id: str) -> dict[str, Any]:
    case = store.query_one("SELECT * FROM cases WHERE case_id = ?", (case_id,))
    if case is None:
        raise NotFound(f"no case {case_id!r} at this node")
    return case


def _check_reader(cfg: Config, user: User, case: dict[str, Any], action: str) -> None:
    if user.role != "reader":
        raise Forbidden(f"user {user.name!r} has role {user.role!r}; only a reader may {action}")
    if case["service"] not in user.services:
        raise Forbidden(f"reader {user.name!r} reads {', '.join(user.services) or 'nothing'}, "
                        f"not {case['service']!r} (case {case['case_id']})")


def claim(store: Store, cfg: Config, case_id: str, user: User,
          now: float | None = None) -> dict[str, Any]:
    """Claim a case for ``user`` (a reader of its service) for ``reading.claim_ttl_s``."""
    now = time.time() if now is None else now
    _expire_claims(store, cfg, now)
    case = _case(store, case_id)
    _check_reader(cfg, user, case, "claim cases")
    if case["read_state"] is None:
        raise ReadingError(f"case {case_id} is {case['state']} here, not on the worklist")
    until = now + cfg.reading.claim_ttl_s
    with store.atomic() as con:  # checked and claimed in one transaction: one reader wins
        held = con.execute("SELECT claimed_by, claimed_until FROM cases WHERE case_id = ? AND "
                           "read_state = 'claimed'", (case_id,)).fetchone()
        if held is not None and held[0] != user.name:
            raise ReadingError(f"case {case_id} is claimed by {held[0]} for another "
                               f"{held[1] - now:.0f} s")
        new_state = states.move(con, case_id, "claim", who=user.role, now=now,
                                column=states.READ,
                                also={"claimed_by": user.name, "claimed_until": until})
        ledger.record(store, "claimed", node=cfg.node.name, actor=user.name, role=user.role,
                      obj=case_id, case_id=case_id, detail={"until": until}, con=con, at=now)
    log.info("case claimed case=%s reader=%s until=%.0f", case_id, user.name, until)
    return {"case_id": case_id, "claimed_by": user.name, "claimed_until": until,
            "state": new_state}


def unclaim(store: Store, cfg: Config, case_id: str, user: User,
            now: float | None = None) -> None:
    now = time.time() if now is None else now
    case = _case(store, case_id)
    if case["read_state"] != "claimed" or case["claimed_by"] != user.name:
        raise ReadingError(f"case {case_id} is not claimed by {user.name}")
    with store.atomic() as con:
        states.move(con, case_id, "unclaim", who=user.role, now=now, column=states.READ,
                    also={"claimed_by": None, "claimed_until": None})
        ledger.record(store, "unclaimed", node=cfg.node.name, actor=user.name, role=user.role,
                      obj=case_id, case_id=case_id, detail={"why": "released by reader"},
                      con=con, at=now)


def worklist_case_for_study(store: Store, study: str, user: User) -> str | None:
    """The worklist case of ``study`` a report by ``user`` is for: theirs, else the newest."""
    row = store.query_one("SELECT case_id FROM cases WHERE study_instance_uid = ? AND "
                          "kind = 'case' AND read_state IS NOT NULL ORDER BY "
                          "(claimed_by = ?) DESC, received_at DESC LIMIT 1", (study, user.name))
    return str(row["case_id"]) if row else None
