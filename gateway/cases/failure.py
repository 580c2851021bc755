"""A two-step release that fails: the case recorded ``failed``, its preview withdrawn.

A STAT or urgent release queues its preview before it encodes the full bundle
(case.py ``_release_preview_first``).  If the full bundle cannot be made, or the
process dies between the two commits, the case is recorded as ``failed`` here,
and a signed withdrawal follows its preview to every node it went to, so the
preview case there does not wait for ever for a bundle that will not come.
The index's hold on the case (SQLite: a file lock; PostgreSQL: an advisory lock)
tells a live release from a dead one, on any machine of a center.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from fenji.gateway.audit import ledger
from fenji.gateway.cases import bundles, states
from fenji.gateway.store.db import Store
from fenji.routing import encoding, outbox_db, wakeup

log = logging.getLogger(__name__)


class ReleaseLock:
    """The index's hold on ``release:<case_id>`` (:meth:`Index.hold`), kept by the
    process releasing a case in two steps and dropped when that process dies: on
    SQLite a file lock beside the index, on PostgreSQL a session advisory lock that
    every process of the center sees, on whatever machine it runs."""

    def __init__(self, store: Store, case_id: str) -> None:
        self._hold = store.index.hold(_release_key(case_id))
        self._hold.__enter__()

    def release(self) -> None:
        self._hold.__exit__(None, None, None)

    @staticmethod
    def held(store: Store, case_id: str) -> bool:
        """Whether a live process holds the release lock of ``case_id``."""
        return store.index.held(_release_key(case_id))


def _release_key(case_id: str) -> str:
    return f"release:{case_id}"


def fail_release(store: Store, case_id: str, reason: str, *, now: float) -> bool:
    """Move a ``releasing`` case to ``failed`` with the reason in the ledger and, when
    its preview was queued, queue a signed withdrawal after it (one transaction): the
    receiving nodes learn that the full bundle will never come, where a preview case
    would wait for it for ever.  False when the case is not releasing any more."""
    job = store.query_one("SELECT bundle_id, destination, priority FROM outbox WHERE "
                          "case_id = ? ORDER BY created_at LIMIT 1", (case_id,))
    wd = bundles.stage_withdrawal(store, str(job["bundle_id"]), reason) if job else None
    done = False
    dropped: list[Path] = []
    try:
        with store.atomic() as con:
            row = con.execute("SELECT state, sending_node FROM cases WHERE case_id = ?",
                              (case_id,)).fetchone()
            if row is not None and row[0] == "releasing":
                states.move(con, case_id, "release_failed", who=states.NODE, now=now)
                # its full bundle, queued while encoded, will never be whole
                dropped = encoding.drop_unsealed(con, store, case_id)
                ledger.record(store, "release_failed", node=row[1] or "?", actor="release",
                              role=states.NODE, obj=case_id, case_id=case_id,
                              detail={"reason": reason[:500],
                                      **({"withdrawal": wd[0]} if wd else {})},
                              con=con, at=now)
                if wd is not None and job is not None:
                    outbox_db.enqueue(store, wd[0], case_id, str(job["destination"]),
                                      int(job["priority"]), wd[2], now)
                done = True
    finally:
        if wd is not None and not done:
            with contextlib.suppress(OSError):
                wd[1].unlink()
    if done:
        encoding.unlink(dropped)
        log.error("case release failed case=%s reason=%s withdrawal=%s", case_id, reason,
                  wd[0] if wd else None)
        if wd is not None:
            wakeup.wake(store)
    return done


def recover_releases(store: Store, now: float | None = None) -> list[str]:
    """Cases left ``releasing`` by a process that died between a preview-first
    release's two commits: recorded as ``failed`` (their preview may have gone; their
    instances are free for the next release).  Returns their case IDs."""
    now = time.time() if now is None else now
    failed = []
    for row in store.query("SELECT case_id FROM cases WHERE state = 'releasing'"):
        cid = str(row["case_id"])
        if not ReleaseLock.held(store, cid) and fail_release(
                store, cid, "the release was interrupted before its full bundle was recorded",
                now=now):
            failed.append(cid)
    return failed
