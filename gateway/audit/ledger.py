"""The audit ledger: an append-only, hash-chained log of who did what (DESIGN.md §3 step 10).

Each node keeps its own chain in the ``audit`` table.  An event is
``{seq, node, at, kind, actor, role, object, case_id, detail, prev_hash}``;
its ``hash`` is the SHA-256 of the canonical JSON of those fields, and
``prev_hash`` is the hash of the event before it (64 zeros for the first).
Editing, inserting or deleting a row breaks the chain at that row, which
:func:`verify` names.

Events are appended inside the caller's transaction where there is one
(``con=``), so an event exists exactly when the step it records committed.

The signed head
---------------
A chain cannot show that its *newest* events were deleted: what is left is
still a valid chain.  So every append also rewrites one row of
``audit_head``: the node's Ed25519 signature over ``(node, seq, hash, at)``
of the event just appended, in the same transaction as the event.  Because
``hash`` covers the whole chain through ``prev_hash``, that one signature
vouches for every event up to ``seq``.  :func:`verify` then names

* a truncation: the signed head names event 120, the chain ends at 117;
* a rewrite: the event at the signed ``seq`` no longer has the signed hash
  (the whole tail edited and rehashed);
* a forged tail: events after the signed head, appended without the key.

The cost is one Ed25519 signature (tens of microseconds) and one row update
per append; the table never grows.  The key is registered per store with
:func:`set_signer` (the node does it where it opens its store).  Without a
registered key, events are appended unsigned and the head is left as it was,
so a store written by a process without the key shows up as a forged tail.

What a local check cannot show: replacing the whole store (or the head row
and the chain together) with an *older genuine copy* of itself.  The node's
events that travelled to other nodes (:func:`export_case`, kept there in
``audit_foreign``) and the receipts peers signed are the evidence against that.

Cross-node history
------------------
Events travel with bundles and reports (``manifest["case"]["audit"]``, made by
:func:`export_case`).  The receiver keeps other nodes' events in
``audit_foreign`` (:func:`import_events`), each checked against its own hash
on arrival; :func:`case_history` merges them with the local chain.  A foreign
event's hash is not keyed: it proves the event was not changed on the way or
here, while who may hand us events is settled by the transfer itself (mutual
TLS with a configured peer); ``via`` records who did.

Event kinds (DESIGN.md §3): see :data:`KINDS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fenji.gateway.errors import LocalError, PeerError
from fenji.gateway.keys import canonical_json, fingerprint, sign
from fenji.gateway.keys import verify as verify_signature
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


class ForeignEventError(PeerError):
    """Events handed over by another node were refused; none of the batch was kept.

    ``events`` names the offending events as ``node#seq``.
    """

    http_status = 422

    def __init__(self, message: str, events: list[str]) -> None:
        super().__init__(message)
        self.events = list(events)


class MalformedEvent(ForeignEventError):
    """A foreign event lacks a field or has one of the wrong type."""


class TamperedEvent(ForeignEventError):
    """A foreign event's content does not hash to its ``hash``: it was changed."""


class ConflictingEvent(ForeignEventError):
    """A foreign event claims a (node, seq) already held with a different hash."""


class ForgedEvent(ForeignEventError):
    """A foreign event is not signed by the node it names (or by no trusted key)."""


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
    have = {r["name"] for r in store.query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN "
        "('audit_head', 'audit_foreign')")}
    if len(have) < 2:
        with store.atomic() as con:
            for stmt in AUDIT_EXTRA_SQL.split(";"):
                if stmt.strip():
                    con.execute(stmt)
    # Foreign events carry the signature of the node that wrote them (its node
    # key over the event hash); stores from before that get the column here.
    cols = {r["name"] for r in store.query("PRAGMA table_info(audit_foreign)")}
    if "sig" not in cols:
        with store.atomic() as con:
            con.execute("ALTER TABLE audit_foreign ADD COLUMN sig TEXT")
    with contextlib.suppress(TypeError):
        _ready.add(store)


def _detail_text(detail: Any) -> str:
    if isinstance(detail, str):
        detail = json.loads(detail or "{}")
    return json.dumps(detail, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _append(con: sqlite3.Connection, event: dict[str, Any],
            signer: _Signer | None = None) -> dict[str, Any]:
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
           at: float | None = None, con: sqlite3.Connection | None = None) -> dict[str, Any]:
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
    return [_row_event(r) for r in rows]


# ---------------------------------------------------------------------------
# Cross-node history
# ---------------------------------------------------------------------------

def _wire(e: dict[str, Any], sig: str | None = None) -> dict[str, Any]:
    """An event as it travels: the hashed fields, its hash and its author's signature."""
    out = {k: e[k] for k in FIELDS}
    out["hash"] = e["hash"]
    if isinstance(out["detail"], str):
        out["detail"] = json.loads(out["detail"] or "{}")
    if sig:
        out["sig"] = sig
    return out


def event_signature(key: Ed25519PrivateKey, event_hash_hex: str) -> str:
    """The author node's signature over an event's hash (what a receiver verifies)."""
    return sign(key, f"fenji-audit-event:{event_hash_hex}".encode())


def event_signed_by(pub: Ed25519PublicKey, event_hash_hex: str, sig: str) -> bool:
    return verify_signature(pub, f"fenji-audit-event:{event_hash_hex}".encode(), sig)


def foreign_events(store: Any, *, case_id: str | None = None,
                   kind: str | None = None) -> list[dict[str, Any]]:
    """Other nodes' events held here, by node and seq, each with ``via`` and ``imported_at``."""
    ensure_tables(store)
    sql, args, where = "SELECT * FROM audit_foreign", [], []
    if case_id is not None:
        where.append("case_id = ?")
        args.append(case_id)
    if kind is not None:
        where.append("kind = ?")
        args.append(kind)
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [_row_event(r) for r in store.query(sql + " ORDER BY node, seq", tuple(args))]


def export_case(store: Any, case_id: str) -> list[dict[str, Any]]:
    """A case's history to travel with a bundle: this node's events and the foreign ones held.

    Each event is ``{seq, node, at, kind, actor, role, object, case_id,
    detail, prev_hash, hash}``, JSON-able; the receiver checks every hash
    (:func:`import_events`).
    """
    signer = _signer_of(store)
    own = [_wire(e, event_signature(signer.key, e["hash"]) if signer else None)
           for e in events(store, case_id=case_id)]
    held = [_wire(e, e.get("sig")) for e in foreign_events(store, case_id=case_id)]
    return sorted(own + held, key=lambda e: (e["at"], e["node"], e["seq"]))


def _check_shape(e: Any, i: int) -> str | None:
    if not isinstance(e, dict):
        return f"events[{i}] is a {type(e).__name__}, not an object"
    missing = [k for k in (*FIELDS, "hash") if k not in e]
    if missing:
        return f"events[{i}] lacks {', '.join(missing)}"
    if not isinstance(e["seq"], int) or isinstance(e["seq"], bool) or e["seq"] < 1:
        return f"events[{i}].seq = {e['seq']!r} is not a positive integer"
    if not isinstance(e["at"], int | float) or isinstance(e["at"], bool):
        return f"events[{i}].at = {e['at']!r} is not a time"
    for k in ("node", "kind", "actor", "role", "object", "prev_hash", "hash"):
        if not isinstance(e[k], str) or not e[k]:
            return f"events[{i}].{k} = {e[k]!r} is not a non-empty string"
    if e["case_id"] is not None and not isinstance(e["case_id"], str):
        return f"events[{i}].case_id = {e['case_id']!r} is not a string"
    if not isinstance(e["detail"], dict | str):
        return f"events[{i}].detail is a {type(e['detail']).__name__}, not an object"
    return None


def _name(e: dict[str, Any]) -> str:
    return f"{e.get('node')}#{e.get('seq')}"


def _describe(e: dict[str, Any]) -> str:
    case = e.get("case_id")
    return (f"kind={e.get('kind')}, actor={e.get('actor')}"
            + (f", case={case}" if case else ""))


def import_events(store: Any, events_in: list[dict[str, Any]], *, via: str,
                  now: float | None = None,
                  trusted: Mapping[str, Ed25519PublicKey] | None = None) -> int:
    """Keep other nodes' events (from a bundle or report manifest); returns how many were new.

    Idempotent: an event already held (same node, seq and hash) or one of this
    node's own (its hash is in the local chain) is skipped.  Every event is
    checked first and the batch is all or nothing: an event whose content
    does not hash to its ``hash`` raises :class:`TamperedEvent`, one that
    claims a held (node, seq) with another hash :class:`ConflictingEvent`,
    a malformed one :class:`MalformedEvent`; each names the events.
    """
    ensure_tables(store)
    now = time.time() if now is None else now
    bad_shape = [(i, msg) for i, e in enumerate(events_in)
                 if (msg := _check_shape(e, i)) is not None]
    if bad_shape:
        raise MalformedEvent(f"{len(bad_shape)} audit event(s) from {via} are malformed: "
                             + "; ".join(m for _, m in bad_shape[:5]),
                             [f"events[{i}]" for i, _ in bad_shape])
    tampered = []
    for e in events_in:
        got = event_hash(e)
        if got != e["hash"]:
            tampered.append((e, got))
    if tampered:
        raise TamperedEvent(
            f"{len(tampered)} audit event(s) from {via} were changed: " + "; ".join(
                f"event {_name(e)} ({_describe(e)}) has hash {e['hash'][:16]}… but its "
                f"content hashes to {got[:16]}…" for e, got in tampered[:5]),
            [_name(e) for e, _ in tampered])
    fresh: dict[tuple[str, int], dict[str, Any]] = {}
    conflicts = []
    for e in events_in:
        if store.query_one("SELECT 1 AS x FROM audit WHERE hash = ?", (e["hash"],)):
            continue  # one of our own events, come back with the case's history
        held = store.query_one("SELECT hash FROM audit_foreign WHERE node = ? AND seq = ?",
                               (e["node"], e["seq"]))
        other = fresh.get((e["node"], e["seq"]))
        theirs = held["hash"] if held else other["hash"] if other else None
        if theirs is not None and theirs != e["hash"]:
            conflicts.append((e, theirs))
        elif theirs is None:
            fresh[(e["node"], e["seq"])] = e
    if trusted is not None:
        # Only what its author signed is kept: an event a relay (or anyone) made
        # up in another node's name is refused, and one by a node this node has
        # no key for cannot be checked, so it is left out (and said so).
        forged, unknown = [], []
        for key, e in list(fresh.items()):
            pub = trusted.get(e["node"])
            if pub is None:
                unknown.append(e)
                del fresh[key]
            elif not (isinstance(e.get("sig"), str) and event_signed_by(pub, e["hash"], e["sig"])):
                forged.append(e)
        if forged:
            raise ForgedEvent(
                f"{len(forged)} audit event(s) from {via} are not signed by the node they "
                "name: " + "; ".join(f"event {_name(e)} ({_describe(e)})" for e in forged[:5]),
                [_name(e) for e in forged])
        if unknown:
            log.warning("audit events from %s left out: no key for node(s) %s (add them as "
                        "[[known_nodes]] to keep their history)", via,
                        ", ".join(sorted({str(e["node"]) for e in unknown})))
    if conflicts:
        raise ConflictingEvent(
            f"{len(conflicts)} audit event(s) from {via} contradict events held: " + "; ".join(
                f"event {_name(e)} ({_describe(e)}) has hash {e['hash'][:16]}… but "
                f"{_name(e)} is already held with hash {h[:16]}… (one of them is forged, or "
                f"{e['node']} rewrote its chain)" for e, h in conflicts[:5]),
            [_name(e) for e, _ in conflicts])
    with store.atomic() as con:
        n = 0
        for e in fresh.values():
            n += con.execute(
                "INSERT OR IGNORE INTO audit_foreign(node, seq, at, kind, actor, role, object, "
                "case_id, detail, prev_hash, hash, via, imported_at, sig) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (e["node"], e["seq"], e["at"], e["kind"], e["actor"], e["role"], e["object"],
                 e["case_id"], _detail_text(e["detail"]), e["prev_hash"], e["hash"], via,
                 now, e.get("sig") if isinstance(e.get("sig"), str) else None)).rowcount
    return n


def case_history(store: Any, case_id: str | None = None, *,
                 kind: str | None = None) -> list[dict[str, Any]]:
    """A case's events on every node whose events this node holds, ordered by time.

    Each event carries its ``node``, ``origin`` (``local`` or ``foreign``) and,
    for foreign ones, ``via`` (who handed it over).  ``case_id=None``: all events.
    """
    out = []
    for e in events(store, case_id=case_id, kind=kind):
        e["origin"] = "local"
        out.append(e)
    for e in foreign_events(store, case_id=case_id, kind=kind):
        e["origin"] = "foreign"
        out.append(e)
    return sorted(out, key=lambda e: (e["at"], e["node"], e["seq"]))


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a ledger.

    ``kind``: edited, inserted, deleted, renumbered, truncated, rewritten,
    unsigned (events after the signed head), head (the signed head itself is
    missing or its signature does not verify), foreign (a held foreign event
    was changed or does not link).  ``seq``: the local event concerned, when one is.
    """

    kind: str
    message: str
    seq: int | None = None
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "node": self.node, "message": self.message}


@dataclass
class VerifyResult:
    """What :func:`verify` found; ``ok`` only without problems."""

    problems: list[Problem]
    n_events: int = 0
    n_foreign: int = 0
    last_seq: int | None = None
    head: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.n_events, "foreign_events": self.n_foreign,
                "last_seq": self.last_seq, "head": self.head,
                "problems": [p.to_dict() for p in self.problems], "notes": list(self.notes)}


def _short(h: object) -> str:
    s = str(h)
    return s[:16] + "…" if len(s) > 16 else s


def _ev(r: dict[str, Any]) -> str:
    return f"event {r['seq']} ({_describe(r)})"


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _span(a: int, b: int) -> str:
    return f"event {a}" if a == b else f"events {a}–{b}"


# How far a renumbered row is searched for its original seq when its own links
# cannot tell (rows moved after a deletion).  Only rows that fail their hash pay.
_MAX_SHIFT = 256


# After this many rows searched in vain, only their links are tried (a store
# edited wholesale must not take minutes to verify).
_MAX_SEARCHES = 32


def _original_seq(r: dict[str, Any], hint: int | None, search: bool) -> int | None:
    """The seq a row was hashed with, when its content is intact but it was renumbered."""
    candidates = [hint] if hint is not None else []
    if search:
        for d in range(1, _MAX_SHIFT + 1):
            candidates += [r["seq"] + d, r["seq"] - d]
    for s in candidates:
        if s is not None and s >= 1 and s != r["seq"] and event_hash({**r, "seq": s}) == r["hash"]:
            return s
    return None


def _check_chain(rows: list[dict[str, Any]]) -> list[Problem]:
    problems: list[Problem] = []
    by_hash = {r["hash"]: r for r in rows}
    # The position each row was hashed at, followed through prev_hash links.
    linked_seq: dict[str, int] = {}
    status: dict[int, str] = {}
    moved: dict[int, int] = {}  # seq now -> seq hashed with
    searches = 0
    for r in rows:
        pos = (1 if r["prev_hash"] == GENESIS else
               linked_seq[r["prev_hash"]] + 1 if r["prev_hash"] in linked_seq else None)
        if event_hash(r) == r["hash"]:
            status[r["seq"]] = "intact"
            linked_seq[r["hash"]] = r["seq"]
            continue
        orig = _original_seq(r, pos, searches < _MAX_SEARCHES)
        if orig is None and pos is None:
            searches += 1
        if orig is not None:
            status[r["seq"]] = "moved"
            moved[r["seq"]] = orig
            linked_seq[r["hash"]] = orig
        else:
            status[r["seq"]] = "edited"
            problems.append(Problem(
                "edited", f"{_ev(r)} was edited: stored hash {_short(r['hash'])} != computed "
                f"{_short(event_hash(r))}", r["seq"], r["node"]))
    for i, r in enumerate(rows):
        prev = rows[i - 1] if i else None
        prev_seq = prev["seq"] if prev else 0
        expected = prev["hash"] if prev else GENESIS
        if r["prev_hash"] == expected:
            if r["seq"] != prev_seq + 1 and r["seq"] not in moved:
                problems.append(Problem(
                    "renumbered", f"{_ev(r)} follows event {prev_seq} in the chain but its seq "
                    f"jumps from {prev_seq} to {r['seq']}", r["seq"], r["node"]))
            continue
        gap = r["seq"] - prev_seq - 1
        if r["prev_hash"] in by_hash:
            p = by_hash[r["prev_hash"]]
            if p["seq"] < prev_seq:
                for s in rows:
                    if p["seq"] < s["seq"] < r["seq"]:
                        problems.append(Problem(
                            "inserted", f"{_ev(s)} was inserted: event {r['seq']} links past "
                            f"it to event {p['seq']} (prev_hash {_short(r['prev_hash'])})",
                            s["seq"], s["node"]))
            else:
                problems.append(Problem(
                    "renumbered", f"{_ev(r)} links to event {p['seq']}, which comes after it: "
                    "events were reordered", r["seq"], r["node"]))
        elif prev is None:
            what = (f"events 1–{r['seq'] - 1} were deleted" if r["seq"] > 1 else
                    "the events before it were deleted")
            problems.append(Problem(
                "deleted", f"{what}: the oldest remaining {_ev(r)} links to "
                f"{_short(r['prev_hash'])}, not to the start of the chain", r["seq"],
                r["node"]))
        elif gap > 0:
            problems.append(Problem(
                "deleted", f"{_span(prev_seq + 1, r['seq'] - 1)} "
                f"{'was' if gap == 1 else 'were'} deleted: seq jumps from {prev_seq} to "
                f"{r['seq']} and event {r['seq']}'s prev_hash {_short(r['prev_hash'])} is not "
                "in the chain", prev_seq + 1, r["node"]))
        elif status.get(prev_seq) == "edited":
            continue  # the edited row, already named, also had its stored hash changed
        elif r["seq"] in moved and moved[r["seq"]] > r["seq"]:
            n = moved[r["seq"]] - r["seq"]
            problems.append(Problem(
                "deleted", f"{n} event(s) between event {prev_seq} and {_ev(r)} were deleted "
                f"and the later events renumbered (it was hashed as event {moved[r['seq']]})",
                r["seq"], r["node"]))
        else:
            problems.append(Problem(
                "edited", f"{_ev(prev)} was edited and its hash recomputed: event {r['seq']} "
                f"links to {_short(r['prev_hash'])} but event {prev_seq} now hashes to "
                f"{_short(prev['hash'])}", prev_seq, prev["node"]))
    if moved:
        for a, b in _ranges(list(moved)):
            d = moved[a] - a
            problems.append(Problem(
                "renumbered", f"{_span(a, b)} {'was' if a == b else 'were'} renumbered: "
                f"{'it was' if a == b else 'each was'} hashed as seq {'+' if d > 0 else '−'}"
                f"{abs(d)} (content intact)", a, rows[0]["node"]))
    return sorted(problems, key=lambda p: (p.seq or 0, p.kind))


def _check_head(rows: list[dict[str, Any]], head: dict[str, Any] | None,
                public_key: Ed25519PublicKey | None, require_head: bool,
                result: VerifyResult) -> None:
    problems = result.problems
    last = rows[-1] if rows else None
    if head is None:
        if last is not None:
            msg = (f"no signed head: deletion of the newest events cannot be ruled out "
                   f"(chain ends at event {last['seq']}; the audit_head row is missing or "
                   "the node never signed one: ledger.set_signer)")
            if require_head:
                problems.append(Problem("head", msg))
            else:
                result.notes.append(msg)
        return
    body = head_body(head["node"], head["seq"], head["hash"], head["at"])
    if public_key is None:
        result.notes.append(f"signed head (seq {head['seq']}) not checked against a trusted "
                            f"key: it claims key {_short(head['key'])}")
    elif not verify_signature(public_key, canonical_json(body), head["signature"]):
        problems.append(Problem(
            "head", f"the signed head (seq {head['seq']}, hash {_short(head['hash'])}) does "
            f"not verify with node key {_short(fingerprint(public_key))}: it was forged or "
            "altered", head["seq"], head["node"]))
        return
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(head["at"]))
    if last is None or head["seq"] > last["seq"]:
        start = last["seq"] + 1 if last else 1
        problems.append(Problem(
            "truncated", f"{_span(start, head['seq'])} "
            f"{'was' if start == head['seq'] else 'were'} deleted from the end of the chain: "
            f"the signed head names event {head['seq']} (hash {_short(head['hash'])}, at "
            f"{when}) but the newest event is "
            f"{last['seq'] if last else 'none (the chain is empty)'}", start, head["node"]))
        return
    at_head = next((r for r in rows if r["seq"] == head["seq"]), None)
    if at_head is None or at_head["hash"] != head["hash"]:
        problems.append(Problem(
            "rewritten", f"the chain was rewritten: the signed head says event {head['seq']} "
            f"has hash {_short(head['hash'])}, the chain has "
            f"{_short(at_head['hash']) if at_head else 'no such event'}", head["seq"],
            head["node"]))
    if last["seq"] > head["seq"]:
        problems.append(Problem(
            "unsigned", f"{_span(head['seq'] + 1, last['seq'])} "
            f"{'was' if head['seq'] + 1 == last['seq'] else 'were'} appended after the signed "
            f"head (event {head['seq']}) without the node key: forged, or written by a "
            "process that did not call ledger.set_signer", head["seq"] + 1, head["node"]))


def _check_foreign(rows: list[dict[str, Any]], problems: list[Problem],
                   trusted: Mapping[str, Ed25519PublicKey] | None = None) -> None:
    by_pos = {(r["node"], r["seq"]): r for r in rows}
    for r in rows:
        if trusted is not None:
            pub = trusted.get(r["node"])
            if pub is None:
                problems.append(Problem(
                    "foreign", f"foreign event {_name(r)} ({_describe(r)}, via {r['via']}): "
                    f"no key for node {r['node']} to check its signature", None, r["node"]))
            elif not (r.get("sig") and event_signed_by(pub, r["hash"], r["sig"])):
                problems.append(Problem(
                    "foreign", f"foreign event {_name(r)} ({_describe(r)}, via {r['via']}) is "
                    f"{'not signed' if not r.get('sig') else 'not signed by'} node "
                    f"{r['node']}'s key: forged or unverifiable", None, r["node"]))
        got = event_hash(r)
        if got != r["hash"]:
            problems.append(Problem(
                "foreign", f"foreign event {_name(r)} ({_describe(r)}, via {r['via']}) was "
                f"edited here: stored hash {_short(r['hash'])} != computed {_short(got)}",
                None, r["node"]))
        before = by_pos.get((r["node"], r["seq"] - 1))
        if before is not None and r["prev_hash"] != before["hash"]:
            problems.append(Problem(
                "foreign", f"foreign event {_name(r)} ({_describe(r)}) does not link to "
                f"{_name(before)}: prev_hash {_short(r['prev_hash'])} != "
                f"{_short(before['hash'])}", None, r["node"]))


def verify(store: Any, *, public_key: Ed25519PublicKey | None = None,
           require_head: bool | None = None,
           trusted: Mapping[str, Ed25519PublicKey] | None = None) -> VerifyResult:
    """Walk the chain and name every problem: edited, inserted, deleted, truncated events.

    ``public_key``: the node's own key, to check the signed head with; without
    it the key registered by :func:`set_signer` is used, else the head's
    signature is left unchecked (a note says so).  ``require_head``: a chain
    with events but no signed head is a problem (default: when a key is known),
    since nothing then rules out deleted newest events.  Foreign events held
    are checked against their own hashes and against each other where a
    node's consecutive events are both held.
    """
    ensure_tables(store)
    signer = _signer_of(store)
    if public_key is None and signer is not None:
        public_key = signer.key.public_key()
    if require_head is None:
        require_head = public_key is not None
    # The node may append while we read: the head read before and after the
    # chain must agree, or the chain and the head are from different moments.
    head_sql = "SELECT node, seq, hash, at, key, signature FROM audit_head WHERE id = 1"
    for _ in range(50):
        head = store.query_one(head_sql)
        rows = store.query("SELECT * FROM audit ORDER BY seq")
        if store.query_one(head_sql) == head:
            break
    foreign = store.query("SELECT * FROM audit_foreign ORDER BY node, seq")
    result = VerifyResult(_check_chain(rows), n_events=len(rows), n_foreign=len(foreign),
                          last_seq=rows[-1]["seq"] if rows else None, head=head)
    _check_head(rows, head, public_key, require_head, result)
    _check_foreign(foreign, result.problems, trusted)
    return result
