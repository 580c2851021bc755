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

The code: :mod:`.chain` (this node's chain and its signed head), :mod:`.foreign`
(other nodes' events) and :mod:`.verify`; this module gives their names to callers.
"""

from __future__ import annotations

from fenji.gateway.audit.chain import (  # noqa: F401
    FIELDS,
    GENESIS,
    HEAD_TYPE,
    KINDS,
    LedgerError,
    ensure_tables,
    event_hash,
    events,
    head_body,
    record,
    set_signer,
)
from fenji.gateway.audit.foreign import (  # noqa: F401
    ConflictingEvent,
    ForeignEventError,
    ForgedEvent,
    MalformedEvent,
    TamperedEvent,
    case_history,
    event_signature,
    event_signed_by,
    export_case,
    foreign_events,
    import_events,
)
from fenji.gateway.audit.verify import (  # noqa: F401
    Problem,
    VerifyResult,
    verify,
)
