"""The audit ledger: an append-only, hash-chained log of who did what (DESIGN.md §3 step 10).

Each node keeps its own chain in the ``audit`` table.  An event is
``{seq, node, at, kind, actor, role, object, case_id, detail, prev_hash}``;
its ``hash`` is the SHA-256 of the canonical JSON of those fields, and
``prev_hash`` is the hash of the event before it (64 zeros for the first).
Editing, inserting or deleting a row breaks the chain at that row, which
:func:`verify` names.

Events are appended inside the caller's transaction where there is one
(``con=``), so an event exists exactly when the step it records committed.

Event kinds (DESIGN.md §3): see :data:`KINDS`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from typing import Any

from fenji.gateway.keys import canonical_json

GENESIS = "0" * 64

# kind -> what it records.  Every step of DESIGN.md §3 has one.
KINDS: dict[str, str] = {
    "received": "instances of a study were stored at ingest (per association and study)",
    "quality_verdict": "the quality gate assessed a case (verdict, reasons)",
    "held": "a case was held by the quality gate",
    "override": "a person released a held case with a reason",
    "released": "a case was released for sending (by whom: CLI, API, timer)",
    "sent": "a bundle was delivered to the next hop (receipt kept)",
    "arrived": "a bundle was received and verified at this node (receipt signed)",
    "forwarded": "a relay queued a bundle onward",
    "receipt": "the sender kept the receiver's signed receipt",
    "claimed": "a reader claimed a case",
    "unclaimed": "a claim was released or expired",
    "opened": "patient data was read (who, what, how, from where)",
    "reported": "a reader signed a report",
    "amended": "a reader signed an amendment superseding an earlier report",
    "report_arrived": "a signed report arrived back at the edge",
    "delivered": "a report was handed to the local PACS/HIS",
    "critical": "a critical finding was flagged",
    "acknowledged": "the requesting physician acknowledged a report",
}

MIGRATION_SQL = """
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    node      TEXT NOT NULL,
    at        REAL NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    role      TEXT NOT NULL,
    object    TEXT NOT NULL,
    case_id   TEXT,
    detail    TEXT NOT NULL DEFAULT '{}',
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL UNIQUE
);
CREATE INDEX audit_case ON audit(case_id);
CREATE INDEX audit_kind ON audit(kind, at)
"""

FIELDS = ("seq", "node", "at", "kind", "actor", "role", "object", "case_id", "detail",
          "prev_hash")


class LedgerError(Exception):
    """The ledger cannot record an event (unknown kind, missing actor)."""


def event_hash(event: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the hashed fields (``detail`` as its object)."""
    body = {k: event.get(k) for k in FIELDS}
    if isinstance(body["detail"], str):
        body["detail"] = json.loads(body["detail"] or "{}")
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _append(con: sqlite3.Connection, event: dict[str, Any]) -> dict[str, Any]:
    last = con.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    event["seq"] = (last[0] + 1) if last else 1
    event["prev_hash"] = last[1] if last else GENESIS
    event["hash"] = event_hash(event)
    con.execute("INSERT INTO audit(seq, node, at, kind, actor, role, object, case_id, detail, "
                "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event["seq"], event["node"], event["at"], event["kind"], event["actor"],
                 event["role"], event["object"], event["case_id"],
                 json.dumps(event["detail"], sort_keys=True, ensure_ascii=False,
                            separators=(",", ":")),
                 event["prev_hash"], event["hash"]))
    return event


def record(store: Any, kind: str, *, node: str, actor: str, role: str, obj: str,
           case_id: str | None = None, detail: dict[str, Any] | None = None,
           at: float | None = None, con: sqlite3.Connection | None = None) -> dict[str, Any]:
    """Append one event; returns it with its ``seq`` and ``hash``.

    ``con``: the caller's open write transaction (the event commits with the
    step it records).  Without it the event is its own transaction.
    """
    if kind not in KINDS:
        raise LedgerError(f"unknown audit event kind {kind!r} (known: {', '.join(KINDS)})")
    if not actor or not role or not node:
        raise LedgerError(f"audit event {kind!r} needs node, actor and role "
                          f"(got node={node!r} actor={actor!r} role={role!r})")
    event: dict[str, Any] = {"node": node, "at": time.time() if at is None else at,
                             "kind": kind, "actor": actor, "role": role, "object": obj,
                             "case_id": case_id, "detail": dict(detail or {})}
    if con is not None:
        return _append(con, event)
    with store.atomic() as c:
        return _append(c, event)


def events(store: Any, *, case_id: str | None = None,
           kind: str | None = None) -> list[dict[str, Any]]:
    """This node's events in chain order (optionally one case's or one kind's)."""
    sql, args = "SELECT * FROM audit", []
    where = []
    if case_id is not None:
        where.append("case_id = ?")
        args.append(case_id)
    if kind is not None:
        where.append("kind = ?")
        args.append(kind)
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = store.query(sql + " ORDER BY seq", tuple(args))
    for r in rows:
        r["detail"] = json.loads(r["detail"] or "{}")
    return list(rows)
