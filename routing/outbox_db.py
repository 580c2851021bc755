"""The outbox's persistence shell over the node's store index.

Every decision comes from :mod:`fenji.routing.outbox`; this module loads
rows, asks the core, and writes the result inside ``store.atomic()``, so two
claimers never get the same job: on SQLite that is one ``BEGIN IMMEDIATE``
transaction (one writer at a time); on PostgreSQL, where several center
processes claim at once, the candidate rows are read ``FOR UPDATE SKIP
LOCKED``: a job another claimer is leasing right now is not seen at all, and
one it leased is seen with its new lease.  Leases make a crashed sender
harmless: its job becomes claimable again when the lease expires.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from fenji.gateway.errors import PeerError
from fenji.gateway.store.db import Store
from fenji.gateway.store.index import POSTGRESQL, Con, dialect_of
from fenji.routing import outbox as core
from fenji.routing import wakeup
from fenji.routing.outbox import OutboxPolicy


class OutboxError(PeerError):
    """An operator request about the outbox that cannot be done (names the value)."""


def enqueue(store: Store, bundle_id: str, case_id: str, destination: str, priority: int,
            bytes_total: int, now: float) -> int:
    """Queue a bundle for a destination; idempotent by ``bundle_id``. Returns the job id.

    ``bytes_total`` -1 (``routing.encoding.ENCODING``): the bundle is still being
    encoded; queueing it again with its size seals it (the sender may then declare
    its length and let the receiver finalize it).  After the commit the node's
    sender is woken, in whatever process it runs.
    """
    with store.atomic() as con:
        row = con.execute("SELECT job_id, bytes_total FROM outbox WHERE bundle_id = ?",
                          (bundle_id,)).fetchone()
        if row is not None:
            if int(row[1]) < 0 < int(bytes_total):
                con.execute("UPDATE outbox SET bytes_total = ?, updated_at = ? WHERE "
                            "job_id = ?", (int(bytes_total), now, int(row[0])))
            return int(row[0])
        job_id = int(con.execute(
            "INSERT INTO outbox(bundle_id, case_id, destination, priority, state, attempts, "
            "next_attempt_at, bytes_total, bytes_sent, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 0, ?, ?, 0, ?, ?) RETURNING job_id",
            (bundle_id, case_id, destination, int(priority), core.QUEUED, now,
             int(bytes_total), now, now)).fetchone()[0])
        con.execute("INSERT OR IGNORE INTO destinations(name) VALUES (?)", (destination,))
    wakeup.wake(store)
    return job_id


def _dests(con: Any) -> dict[str, dict[str, Any]]:
    return {r["name"]: dict(r) for r in con.execute("SELECT * FROM destinations")}


def _claimable(con: Con) -> list[dict[str, Any]]:
    """The jobs a claimer may pick from, locked for this transaction on PostgreSQL
    (``SKIP LOCKED``: what another claimer holds now is not a candidate)."""
    lock = " FOR UPDATE SKIP LOCKED" if dialect_of(con) == POSTGRESQL else ""
    return [dict(r) for r in con.execute(
        f"SELECT * FROM outbox WHERE state IN ('queued', 'leased') ORDER BY job_id{lock}")]


def claim(store: Store, owner: str, now: float, policy: OutboxPolicy,
          rng: random.Random | None = None) -> dict[str, Any] | None:
    """Lease the next job to send (STAT first), or None."""
    del rng  # claim order is deterministic; kept for a uniform signature
    with store.atomic() as con:
        jobs = _claimable(con)
        job = core.pick(jobs, _dests(con), now, policy)
        if job is None:
            return None
        return _lease(con, job, owner, now, policy)


def _lease(con: Any, job: dict[str, Any], owner: str, now: float,
           policy: OutboxPolicy) -> dict[str, Any]:
    state = job["state"]
    if state == core.LEASED:  # its sender is presumed dead: back in the queue first
        state = core.transition(state, "lease_expired")
    state = core.transition(state, "claim")
    con.execute("UPDATE outbox SET state = ?, lease_owner = ?, lease_until = ?, "
                "updated_at = ? WHERE job_id = ?",
                (state, owner, now + policy.lease_s, now, job["job_id"]))
    job.update(state=state, lease_owner=owner, lease_until=now + policy.lease_s)
    return job


def next_step(store: Store, owner: str, now: float,
              policy: OutboxPolicy) -> dict[str, Any] | core.Wait | core.Idle:
    """The core's :func:`~fenji.routing.outbox.next_action`, applied: a leased job to
    send, or how long the sender may sleep (``Wait(until)``; ``Idle``: until woken)."""
    with store.atomic() as con:
        jobs = _claimable(con)
        act = core.next_action(jobs, _dests(con), now, None, policy)
        if isinstance(act, core.Send):
            return _lease(con, act.job, owner, now, policy)
        return act


def outranked(store: Store, job: dict[str, Any], now: float, policy: OutboxPolicy) -> bool:
    """Would the core pick another job for this job's destination before it?  (The
    sender yields at the next chunk boundary: STAT preemption.)"""
    with store.atomic() as con:
        jobs = [dict(r) for r in con.execute(
            "SELECT * FROM outbox WHERE state = ? AND destination = ? AND job_id != ?",
            (core.QUEUED, job["destination"], job["job_id"]))]
        if not jobs:
            return False
        rival = core.pick(jobs + [job], _dests(con), now, policy)
    return rival is not None and rival["job_id"] != job["job_id"] and \
        int(rival["priority"]) < int(job["priority"])


def _owned(con: Any, job_id: int, owner: str) -> dict[str, Any]:
    row = con.execute("SELECT * FROM outbox WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise OutboxError(f"no outbox job {job_id}")
    return dict(row)


def progress(store: Store, job_id: int, owner: str, bytes_sent: int, now: float,
             policy: OutboxPolicy | None = None) -> bool:
    """Record bytes sent and extend the lease (a heartbeat).

    Returns False when ``owner`` no longer holds the job (its lease expired and
    another sender claimed it, or it was finished): the caller should stop.
    Pass the same ``policy`` as to :func:`claim`, or the default lease is used.
    """
    lease = (policy or OutboxPolicy()).lease_s
    with store.atomic() as con:
        cur = con.execute("UPDATE outbox SET bytes_sent = ?, lease_until = ?, updated_at = ? "
                          "WHERE job_id = ? AND state = 'leased' AND lease_owner = ?",
                          (int(bytes_sent), now + lease, now, job_id, owner))
        return cur.rowcount == 1


def complete(store: Store, job_id: int, owner: str, now: float,
             policy: OutboxPolicy | None = None) -> None:
    pol = policy or OutboxPolicy()
    with store.atomic() as con:
        job = _owned(con, job_id, owner)
        if job["state"] == core.DONE:
            return
        f = core.on_success(job, now)
        con.execute("UPDATE outbox SET state = ?, bytes_sent = ?, lease_owner = ?, "
                    "lease_until = ?, done_at = ?, updated_at = ?, attempts = ?, "
                    "last_error = ? WHERE job_id = ?",
                    (f["state"], f["bytes_sent"], f["lease_owner"], f["lease_until"],
                     f["done_at"], f["updated_at"], f["attempts"], f["last_error"], job_id))
        _update_breaker(con, job["destination"], True, now, pol)


def fail(store: Store, job_id: int, owner: str, error: str, now: float,
         policy: OutboxPolicy | None = None, rng: random.Random | None = None, *,
         retryable: bool = True, progressed: bool = False, max_delay_s: float | None = None
         ) -> core.Retry | core.DeadLetter | core.LeaseLost:
    """Apply the core's decision after a failed attempt.

    A sender whose lease expired and was taken by another sender (or whose job
    is no longer leased) changes nothing: it gets ``LeaseLost`` back.
    """
    pol = policy or OutboxPolicy()
    rnd = rng or random.Random()
    with store.atomic() as con:
        job = _owned(con, job_id, owner)
        if job["state"] != core.LEASED or job["lease_owner"] != owner:
            return core.LeaseLost(job["lease_owner"])
        attempts = int(job["attempts"]) + 1
        decision = core.on_failure(attempts, float(job["created_at"]), now, error, retryable,
                                   pol, rnd, progressed, max_delay_s)
        if isinstance(decision, core.Retry):
            state = core.transition(job["state"], "retry")
            con.execute("UPDATE outbox SET state = ?, attempts = ?, next_attempt_at = ?, "
                        "lease_owner = NULL, lease_until = NULL, last_error = ?, updated_at = ? "
                        "WHERE job_id = ?", (state, attempts, decision.at, error[:2000], now,
                                             job_id))
        else:
            state = core.transition(job["state"], "give_up")
            con.execute("UPDATE outbox SET state = ?, attempts = ?, lease_owner = NULL, "
                        "lease_until = NULL, last_error = ?, updated_at = ? WHERE job_id = ?",
                        (state, attempts, decision.reason[:2000], now, job_id))
        if max_delay_s is None:  # a peer that answered "who are you?" is up, not down
            _update_breaker(con, job["destination"], False, now, pol)
        return decision


def release(store: Store, job_id: int, owner: str, now: float) -> None:
    """Give a leased job back without counting an attempt (yield to a STAT job)."""
    with store.atomic() as con:
        job = _owned(con, job_id, owner)
        if job["state"] != core.LEASED:
            return
        state = core.transition(job["state"], "yield")
        con.execute("UPDATE outbox SET state = ?, lease_owner = NULL, lease_until = NULL, "
                    "next_attempt_at = ?, updated_at = ? WHERE job_id = ?",
                    (state, now, now, job_id))
    wakeup.wake(store)


def return_leases(store: Store, owners: Iterable[str] | None, now: float) -> int:
    """Put the jobs leased by ``owners`` (dead processes; ``None``: every owner) back in
    the queue at once, without counting an attempt, rather than after their lease.

    Conditional on the owner still holding each job, so that two live processes
    noticing the same death, or a sender that took the job meanwhile, change
    nothing.  Returns how many jobs went back.
    """
    who = None if owners is None else set(owners)
    back = 0
    with store.atomic() as con:
        for job in con.execute("SELECT job_id, state, lease_owner FROM outbox WHERE state = ?",
                               (core.LEASED,)).fetchall():
            if who is not None and job["lease_owner"] not in who:
                continue
            state = core.transition(job["state"], "lease_expired")
            back += con.execute(
                "UPDATE outbox SET state = ?, lease_owner = NULL, lease_until = NULL, "
                "updated_at = ? WHERE job_id = ? AND state = ? AND coalesce(lease_owner, '') = ?",
                (state, now, job["job_id"], core.LEASED, job["lease_owner"] or "")).rowcount
    if back:
        wakeup.wake(store)
    return back


def _update_breaker(con: Any, destination: str, success: bool, now: float,
                    policy: OutboxPolicy) -> None:
    row = con.execute("SELECT * FROM destinations WHERE name = ?", (destination,)).fetchone()
    fields = core.breaker_after(dict(row) if row else None, success, now, policy)
    con.execute("INSERT INTO destinations(name, breaker, consecutive_failures, open_until) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET breaker = excluded.breaker, "
                "consecutive_failures = excluded.consecutive_failures, "
                "open_until = excluded.open_until",
                (destination, fields["breaker"], fields["consecutive_failures"],
                 fields["open_until"]))


def pause(store: Store, destination: str, paused: bool = True, *,
          configured: Iterable[str] = ()) -> None:
    """Stop (or with ``paused=False`` restart) sending to a destination.

    A destination is known once a job was queued for it, or if it is in
    ``configured`` (the node's peers and egress targets: an operator may pause
    a link before anything is queued for it).
    """
    with store.atomic() as con:
        if destination in set(configured):
            con.execute("INSERT OR IGNORE INTO destinations(name) VALUES (?)", (destination,))
        known = con.execute("SELECT 1 FROM destinations WHERE name = ?",
                            (destination,)).fetchone()
        if known is None:
            names = [r[0] for r in con.execute("SELECT name FROM destinations")]
            raise OutboxError(f"unknown destination {destination!r} (known: "
                              f"{', '.join(names) or 'none yet'})")
        con.execute("UPDATE destinations SET paused = ? WHERE name = ?",
                    (1 if paused else 0, destination))
    if not paused:
        wakeup.wake(store)


def resume(store: Store, destination: str, *, configured: Iterable[str] = ()) -> None:
    """Send to a paused destination again."""
    pause(store, destination, paused=False, configured=configured)


def heartbeat(store: Store, job_id: int, owner: str, bytes_sent: int, now: float,
              policy: OutboxPolicy | None = None) -> bool:
    """Alias of :func:`progress`: extend the lease and record bytes sent."""
    return progress(store, job_id, owner, bytes_sent, now, policy)


def requeue_dead(store: Store, job_id: int, now: float) -> None:
    """Operator action: a dead-lettered job goes back to the queue, attempts reset."""
    with store.atomic() as con:
        row = con.execute("SELECT state FROM outbox WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise OutboxError(f"no outbox job {job_id}")
        try:
            state = core.transition(row[0], "operator_retry")
        except core.TransitionError:
            raise OutboxError(f"job {job_id} is {row[0]}, not dead: nothing to retry") from None
        con.execute("UPDATE outbox SET state = ?, attempts = 0, next_attempt_at = ?, "
                    "updated_at = ? WHERE job_id = ?", (state, now, now, job_id))
    wakeup.wake(store)


def list_jobs(store: Store, *, state: str | None = None,
              destination: str | None = None) -> list[dict[str, Any]]:
    sql, args = "SELECT * FROM outbox WHERE 1 = 1", []
    if state:
        sql += " AND state = ?"
        args.append(state)
    if destination:
        sql += " AND destination = ?"
        args.append(destination)
    return store.query(sql + " ORDER BY state, priority, created_at, job_id", tuple(args))


def destinations(store: Store) -> list[dict[str, Any]]:
    return store.query("SELECT * FROM destinations ORDER BY name")
