"""Verifying an audit chain: edits, insertions, deletions, truncation, forged tails."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)

from fenji.gateway.audit.chain import GENESIS, _signer_of, ensure_tables, event_hash, head_body
from fenji.gateway.audit.foreign import _describe, _name, event_signed_by
from fenji.gateway.keys import canonical_json, fingerprint
from fenji.gateway.keys import verify as verify_signature

log = logging.getLogger(__name__)

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
            problems.append(_about("edited", r, f"{_ev(r)} was edited: stored hash "
                                   f"{_short(r['hash'])} != computed {_short(event_hash(r))}"))
    for i, r in enumerate(rows):
        prev = rows[i - 1] if i else None
        prev_seq = prev["seq"] if prev else 0
        expected = prev["hash"] if prev else GENESIS
        if r["prev_hash"] == expected:
            if r["seq"] != prev_seq + 1 and r["seq"] not in moved:
                problems.append(_about("renumbered", r, f"{_ev(r)} follows event {prev_seq} in "
                                       f"the chain but its seq jumps from {prev_seq} to "
                                       f"{r['seq']}"))
            continue
        gap = r["seq"] - prev_seq - 1
        if r["prev_hash"] in by_hash:
            p = by_hash[r["prev_hash"]]
            if p["seq"] < prev_seq:
                for s in rows:
                    if p["seq"] < s["seq"] < r["seq"]:
                        problems.append(_about("inserted", s, f"{_ev(s)} was inserted: event "
                                               f"{r['seq']} links past it to event {p['seq']} "
                                               f"(prev_hash {_short(r['prev_hash'])})"))
            else:
                problems.append(_about("renumbered", r, f"{_ev(r)} links to event {p['seq']}, "
                                       "which comes after it: events were reordered"))
        elif prev is None:
            what = (f"events 1–{r['seq'] - 1} were deleted" if r["seq"] > 1 else
                    "the events before it were deleted")
            problems.append(_about("deleted", r, f"{what}: the oldest remaining {_ev(r)} links "
                                   f"to {_short(r['prev_hash'])}, not to the start of the chain"))
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
            problems.append(_about("deleted", r, f"{n} event(s) between event {prev_seq} and "
                                   f"{_ev(r)} were deleted and the later events renumbered "
                                   f"(it was hashed as event {moved[r['seq']]})"))
        else:
            problems.append(_about("edited", prev, f"{_ev(prev)} was edited and its hash "
                                   f"recomputed: event {r['seq']} links to "
                                   f"{_short(r['prev_hash'])} but event {prev_seq} now hashes "
                                   f"to {_short(prev['hash'])}"))
    if moved:
        for a, b in _ranges(list(moved)):
            d = moved[a] - a
            problems.append(Problem(
                "renumbered", f"{_span(a, b)} {'was' if a == b else 'were'} renumbered: "
                f"{'it was' if a == b else 'each was'} hashed as seq {'+' if d > 0 else '−'}"
                f"{abs(d)} (content intact)", a, rows[0]["node"]))
    return sorted(problems, key=lambda p: (p.seq or 0, p.kind))


def _about(kind: str, row: dict[str, Any], message: str) -> Problem:
    """A problem of ``kind`` at event ``row`` (its seq and node)."""
    return Problem(kind, message, row["seq"], row["node"])


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
