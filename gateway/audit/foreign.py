"""Other nodes' audit events: exported with a case, checked and kept on arrival, merged."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fenji.gateway.audit.chain import (
    FIELDS,
    _detail_text,
    _signer_of,
    ensure_tables,
    event_hash,
    events,
    select_events,
)
from fenji.gateway.errors import PeerError
from fenji.gateway.keys import sign
from fenji.gateway.keys import verify as verify_signature

log = logging.getLogger(__name__)

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
    return select_events(store, "audit_foreign", "node, seq", case_id=case_id, kind=kind)


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
