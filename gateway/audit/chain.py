"""This node's hash-chained audit events: hashing, the signed head, appending, reading."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)

from fenji.gateway.errors import LocalError
from fenji.gateway.keys import canonical_json, fingerprint, sign
from fenji.gateway.store.index import POSTGRESQL, Con, dialect_of
from fenji.gateway.store.index_pg import LEDGER_LOCK
from fenji.gateway.store.migrations import AUDIT_EXTRA_SQL

log = logging.getLogger(__name__)

GENESIS = "0" * 64
HEAD_TYPE = "fenji-audit-head"

# kind -> what it records.  Every step of DESIGN.md §3 has one.
KINDS: dict[str, str] = {
    "received": "instances of a study were stored at ingest (per association and study)",
    "quality_verdict": "the quality gate assessed a case (verdict, reasons)",
    "held": "a case was held by the quality gate",
    "override": "a person released a held case with a reason",
    "released": "a case was released for sending (by whom: CLI, API, timer)",
    "release_failed": "a case's preview was queued but its full bundle could not be made (why)",
    "withdrawn": "a receiving node learnt from the sender's signed withdrawal that a "
                 "previewed case will never come whole (why)",
    "excluded": "an instance was dropped from a held case before release (who, why)",
    "sent": "a bundle first went on the wire to the next hop (once per bundle)",
    "arrived": "a bundle was received and verified at this node (receipt signed)",
    "forwarded": "a relay queued a bundle onward",
    "receipt": "the sender kept the receiver's signed receipt",
    "dead_lettered": "the sender gave up on a bundle (why: the last error)",
    "retried": "an operator put a dead-lettered bundle back in the queue",
    "claimed": "a reader claimed a case",
    "unclaimed": "a claim was released or expired",
    "opened": "patient data was read (who, what, how, from where)",
    "report_draft": "a workstation sent a report object by DICOM: a draft until its reader signs",
    "reported": "a reader signed a report",
    "amended": "a reader signed an amendment superseding an earlier report",
    "report_arrived": "a signed report arrived back at the edge",
    "delivered": "a report was handed to the local PACS/HIS",
    "critical": "a critical finding was flagged",
    "acknowledged": "the requesting physician acknowledged a report",
}



FIELDS = ("seq", "node", "at", "kind", "actor", "role", "object", "case_id", "detail",
          "prev_hash")


class LedgerError(LocalError):
    """The ledger cannot record an event (unknown kind, missing actor)."""


# ---------------------------------------------------------------------------
# Hashing and appending
# ---------------------------------------------------------------------------

def event_hash(event: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the hashed fields (``detail`` as its object)."""
    body = {k: event.get(k) for k in FIELDS}
    if isinstance(body["detail"], str):
        body["detail"] = json.loads(body["detail"] or "{}")
    return hashlib.sha256(canonical_json(body)).hexdigest()


def head_body(node: str, seq: int, hash_: str, at: float) -> dict[str, Any]:
    """What the node signs about its newest event (the signed head)."""
    return {"type": HEAD_TYPE, "node": node, "seq": seq, "hash": hash_, "at": at}


@dataclass(frozen=True, slots=True)
class _Signer:
    node: str
    key: Ed25519PrivateKey
    key_hex: str


# store -> its signer; weak so that a closed, dropped store takes its key with it.
_signers: weakref.WeakKeyDictionary[Any, _Signer] = weakref.WeakKeyDictionary()
# stores whose extra tables are known to exist.
_ready: weakref.WeakSet[Any] = weakref.WeakSet()


def set_signer(store: Any, node: str, key: Ed25519PrivateKey | None) -> None:
    """Sign this store's head with ``key`` (the node key) on every append; ``None`` stops.

    Call it once where the node opens its store (every process that appends
    events).  The first signed append vouches for every event before it.
    """
    if key is None:
        _signers.pop(store, None)
        return
    ensure_tables(store)
    _signers[store] = _Signer(node, key, fingerprint(key.public_key()))


def _signer_of(store: Any) -> _Signer | None:
    try:
        return _signers.get(store)
    except TypeError:  # a store that cannot be weakly referenced never had a signer
        return None


def ensure_tables(store: Any) -> None:
    """Add the head and foreign tables to a store migrated before they existed (idempotent)."""
    try:
        if store in _ready:
            return
    except TypeError:
        pass
    have = store.index.tables() & {"audit_head", "audit_foreign"}
    if len(have) < 2:
        with store.atomic() as con:
            for stmt in AUDIT_EXTRA_SQL.split(";"):
                if stmt.strip():
                    con.execute(stmt)
    # Foreign events carry the signature of the node that wrote them (its node
    # key over the event hash); stores from before that get the column here.
    cols = store.index.columns("audit_foreign")
    if "sig" not in cols:
        # PostgreSQL: center processes starting together all get here; the first
        # ALTER adds the column, the others wait for it and find it there.
        exists = " IF NOT EXISTS" if store.index.dialect == POSTGRESQL else ""
        with store.atomic() as con:
            con.execute(f"ALTER TABLE audit_foreign ADD COLUMN{exists} sig TEXT")
    with contextlib.suppress(TypeError):
        _ready.add(store)


def _detail_text(detail: Any) -> str:
    if isinstance(detail, str):
        detail = json.loads(detail or "{}")
    return json.dumps(detail, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _append(con: Con, event: dict[str, Any],
            signer: _Signer | None = None) -> dict[str, Any]:
    """Append ``event`` after the chain's last one, inside the caller's transaction.

    On SQLite the transaction is ``BEGIN IMMEDIATE``: no other writer, in any
    process, runs between reading the last hash and inserting.  On PostgreSQL
    several center processes write at once, so the read-prev-hash + insert is
    serialised by a transaction-level advisory lock (released at COMMIT or
    ROLLBACK): the chain stays one chain, and a second writer reads the first's
    event as its predecessor (docs/decisions.md, "The ledger on PostgreSQL").
    """
    if dialect_of(con) == POSTGRESQL:
        con.execute("SELECT pg_advisory_xact_lock(?)", (LEDGER_LOCK,))
    last = con.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    event["seq"] = (last[0] + 1) if last else 1
    event["prev_hash"] = last[1] if last else GENESIS
    event["hash"] = event_hash(event)
    con.execute("INSERT INTO audit(seq, node, at, kind, actor, role, object, case_id, detail, "
                "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event["seq"], event["node"], event["at"], event["kind"], event["actor"],
                 event["role"], event["object"], event["case_id"],
                 _detail_text(event["detail"]), event["prev_hash"], event["hash"]))
    if signer is not None:
        body = head_body(signer.node, event["seq"], event["hash"], event["at"])
        con.execute("INSERT INTO audit_head(id, node, seq, hash, at, key, signature) "
                    "VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                    "node = excluded.node, seq = excluded.seq, hash = excluded.hash, "
                    "at = excluded.at, key = excluded.key, signature = excluded.signature",
                    (signer.node, event["seq"], event["hash"], event["at"], signer.key_hex,
                     sign(signer.key, canonical_json(body))))
    return event


def record(store: Any, kind: str, *, node: str, actor: str, role: str, obj: str,
           case_id: str | None = None, detail: dict[str, Any] | None = None,
           at: float | None = None, con: Con | None = None) -> dict[str, Any]:
    """Append one event; returns it with its ``seq`` and ``hash``.

    ``con``: the caller's open write transaction (the event commits with the
    step it records).  Without it the event is its own transaction.  When a
    key was registered for ``store`` (:func:`set_signer`) the signed head
    moves to this event in the same transaction.
    """
    if kind not in KINDS:
        raise LedgerError(f"unknown audit event kind {kind!r} (known: {', '.join(KINDS)})")
    if not actor or not role or not node:
        raise LedgerError(f"audit event {kind!r} needs node, actor and role "
                          f"(got node={node!r} actor={actor!r} role={role!r})")
    # float: the column is REAL, and an int would hash as "5" but read back as 5.0.
    event: dict[str, Any] = {"node": node, "at": time.time() if at is None else float(at),
                             "kind": kind, "actor": actor, "role": role, "object": obj,
                             "case_id": case_id, "detail": dict(detail or {})}
    signer = _signer_of(store)
    if con is not None:
        return _append(con, event, signer)
    with store.atomic() as c:
        return _append(c, event, signer)


def _row_event(r: dict[str, Any]) -> dict[str, Any]:
    r["detail"] = json.loads(r["detail"] or "{}")
    return r


def select_events(store: Any, table: str, order: str, *, case_id: str | None = None,
                  kind: str | None = None) -> list[dict[str, Any]]:
    """Events of ``table`` (``audit`` or ``audit_foreign``), optionally one case's or kind's."""
    where = {"case_id = ?": case_id, "kind = ?": kind}
    terms = [w for w, v in where.items() if v is not None]
    sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(terms) if terms else "")
    rows = store.query(f"{sql} ORDER BY {order}",
                       tuple(v for v in where.values() if v is not None))
    return [_row_event(r) for r in rows]


def events(store: Any, *, case_id: str | None = None,
           kind: str | None = None) -> list[dict[str, Any]]:
    """This node's events in chain order (optionally one case's or one kind's)."""
    return select_events(store, "audit", "seq", case_id=case_id, kind=kind)
