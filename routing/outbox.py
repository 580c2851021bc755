"""The outbox's pure core: job states, retry schedule, circuit breaker.

No I/O, no clock, no database: every function takes ``now`` (and a seeded
``random.Random`` where jitter is involved) and returns a decision that the
shell (:mod:`fenji.routing.outbox_db`) writes down.  The job transitions live
in one table, :data:`TRANSITIONS`.

Job states::

    queued --claim--> leased --success--> done
    leased --failure (retryable, budget left)--> queued (next_attempt_at = backoff)
    leased --failure (permanent or budget spent)--> dead (reason kept)
    leased --lease expired (sender crashed)--> queued (no attempt counted)
    leased --yield (higher priority waiting)--> queued (no attempt counted)
    dead --operator retry--> queued

Destinations have a circuit breaker: ``closed`` normally; after
``breaker_threshold`` consecutive failures ``open`` until ``open_until``;
then ``half-open``: one probe job may go; its success closes the breaker, its
failure opens it again.  A paused destination sends nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from fenji.gateway.errors import LocalError

QUEUED, LEASED, DONE, DEAD = "queued", "leased", "done", "dead"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

# (state, event) -> next state.  The only place job transitions are defined.
TRANSITIONS: dict[tuple[str, str], str] = {
    (QUEUED, "claim"): LEASED,
    (LEASED, "success"): DONE,
    (LEASED, "retry"): QUEUED,
    (LEASED, "give_up"): DEAD,
    (LEASED, "lease_expired"): QUEUED,
    (LEASED, "yield"): QUEUED,
    (DEAD, "operator_retry"): QUEUED,
}


class TransitionError(LocalError, ValueError):
    """A move a state table does not allow: a bug of ours, never the peer's."""


def next_state(table: dict[tuple[str, str], str], what: str, state: str, event: str) -> str:
    """``table[(state, event)]``, or TransitionError naming ``what``, the state and the event
    (the outbox's and the upload core's tables both answer through this)."""
    try:
        return table[(state, event)]
    except KeyError:
        raise TransitionError(f"{what} in state {state!r} cannot take event {event!r}") from None


def transition(state: str, event: str) -> str:
    return next_state(TRANSITIONS, "job", state, event)


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    # First retry after ~base, doubling per attempt up to cap: a link that drops
    # for a minute is retried within seconds; a center down for hours is probed
    # every 10 minutes, not hammered.
    base_backoff_s: float = 2.0
    max_backoff_s: float = 600.0
    # +-25 % jitter so many edges recovering at once do not retry in lockstep.
    jitter: float = 0.25
    # Dead-letter after this many failed attempts or this age, whichever first.
    # A township link can be down for a day: keep trying for three.
    max_attempts: int = 200
    max_age_s: float = 3 * 24 * 3600.0
    # A sender that holds a job longer than this without progress has crashed.
    lease_s: float = 60.0
    # Open the breaker after this many consecutive failures to one destination,
    # for this long (other destinations keep going).
    breaker_threshold: int = 5
    breaker_open_s: float = 60.0
    # Jobs allowed in flight to a half-open destination: one probe tells
    # whether the center is back without re-sending the whole backlog into it.
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        if self.base_backoff_s <= 0 or self.max_backoff_s < self.base_backoff_s:
            raise ValueError("need 0 < base_backoff_s <= max_backoff_s")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.max_attempts < 1 or self.lease_s <= 0 or self.breaker_threshold < 1:
            raise ValueError("max_attempts, lease_s and breaker_threshold must be positive")
        if self.half_open_probes < 1:
            raise ValueError(f"half_open_probes must be >= 1, got {self.half_open_probes}")


@dataclass(frozen=True, slots=True)
class Retry:
    at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """A failure reported by a sender whose lease another sender now holds: ignored."""

    owner: str | None


@dataclass(frozen=True, slots=True)
class Send:
    job: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Wait:
    until: float


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing queued that could ever become ready by waiting (all done, dead or paused)."""


def backoff_s(attempts: int, policy: OutboxPolicy, rng: random.Random) -> float:
    """Delay before attempt ``attempts + 1`` (``attempts`` >= 1 failures so far)."""
    raw = min(policy.max_backoff_s, policy.base_backoff_s * 2 ** max(0, attempts - 1))
    return max(0.0, raw * (1 + rng.uniform(-policy.jitter, policy.jitter)))


def on_failure(attempts: int, created_at: float, now: float, reason: str, retryable: bool,
               policy: OutboxPolicy, rng: random.Random,
               progressed: bool = False, max_delay_s: float | None = None
               ) -> Retry | DeadLetter:
    """Decide after a failed attempt; ``attempts`` includes this one.

    An attempt that moved bytes before it failed (a link that drops now and
    then) is retried after the base delay: backoff is for links that are down,
    not for links that are merely flaky.  ``max_delay_s`` caps the delay (a
    peer that does not know us yet is asked again soon after it is paired).
    """
    if not retryable:
        return DeadLetter(f"permanent failure: {reason}")
    if attempts >= policy.max_attempts:
        return DeadLetter(f"gave up after {attempts} attempts; last: {reason}")
    if now - created_at >= policy.max_age_s:
        return DeadLetter(f"gave up after {(now - created_at) / 3600:.1f} h; last: {reason}")
    delay = backoff_s(1 if progressed else attempts, policy, rng)
    return Retry(now + (delay if max_delay_s is None else min(delay, max_delay_s)))


def breaker_state(dest: dict[str, Any] | None, now: float) -> str:
    """closed / open / half-open for a destination row (None: never failed)."""
    if not dest or dest.get("breaker", CLOSED) == CLOSED:
        return CLOSED
    if dest.get("open_until") is not None and now < float(dest["open_until"]):
        return OPEN
    return HALF_OPEN


# (breaker state, event) -> next breaker state: the destination-level table.
# ``failure`` below the threshold keeps a closed breaker closed; ``trip`` is a
# failure that reaches it; ``success`` closes from any state (a job leased
# before the breaker opened may still get through); ``timeout`` is implicit in
# :func:`breaker_state` (open_until passed).
BREAKER_TRANSITIONS: dict[tuple[str, str], str] = {
    (CLOSED, "success"): CLOSED,
    (CLOSED, "failure"): CLOSED,
    (CLOSED, "trip"): OPEN,
    (OPEN, "timeout"): HALF_OPEN,
    (OPEN, "success"): CLOSED,
    (OPEN, "failure"): OPEN,
    (OPEN, "trip"): OPEN,
    (HALF_OPEN, "success"): CLOSED,
    (HALF_OPEN, "failure"): OPEN,
    (HALF_OPEN, "trip"): OPEN,
}


def breaker_after(dest: dict[str, Any] | None, success: bool, now: float,
                  policy: OutboxPolicy) -> dict[str, Any]:
    """The destination's breaker fields after an attempt."""
    state = breaker_state(dest, now)
    failures = 0 if success else int((dest or {}).get("consecutive_failures", 0)) + 1
    event = ("success" if success
             else "trip" if failures >= policy.breaker_threshold else "failure")
    nxt = BREAKER_TRANSITIONS[(state, event)]
    if nxt == OPEN:
        return {"breaker": OPEN, "consecutive_failures": failures,
                "open_until": now + policy.breaker_open_s}
    return {"breaker": nxt, "consecutive_failures": failures, "open_until": None}


def claimable(job: dict[str, Any], dests: dict[str, dict[str, Any]], now: float,
              leased_per_dest: dict[str, int], policy: OutboxPolicy | None = None) -> bool:
    """May this job be claimed now?"""
    dest = dests.get(job["destination"])
    if dest and dest.get("paused"):
        return False
    state = breaker_state(dest, now)
    if state == OPEN:
        return False
    probes = (policy or OutboxPolicy()).half_open_probes
    if state == HALF_OPEN and leased_per_dest.get(job["destination"], 0) >= probes:
        return False  # only the probes go until one succeeds
    if job["state"] == QUEUED:
        return float(job["next_attempt_at"]) <= now
    if job["state"] == LEASED:
        return lease_expired(job, now)
    return False


def pick(jobs: list[dict[str, Any]], dests: dict[str, dict[str, Any]], now: float,
         policy: OutboxPolicy | None = None) -> dict[str, Any] | None:
    """The job to send next: STAT (0) before urgent (1) before routine (2), then oldest."""
    leased: dict[str, int] = {}
    for j in jobs:
        if j["state"] == LEASED and j.get("lease_until") and float(j["lease_until"]) > now:
            leased[j["destination"]] = leased.get(j["destination"], 0) + 1
    ready = [j for j in jobs if claimable(j, dests, now, leased, policy)]
    if not ready:
        return None
    return min(ready, key=lambda j: (int(j["priority"]), float(j["created_at"]),
                                     int(j["job_id"])))


def next_wakeup(jobs: list[dict[str, Any]], dests: dict[str, dict[str, Any]],
                now: float) -> float | None:
    """When something may become claimable (for the shell's sleep)."""
    times = []
    for j in jobs:
        if j["state"] == QUEUED:
            times.append(float(j["next_attempt_at"]))
        elif j["state"] == LEASED and j.get("lease_until"):
            times.append(float(j["lease_until"]))
    for d in dests.values():
        if d.get("open_until"):
            times.append(float(d["open_until"]))
    future = [t for t in times if t > now]
    return min(future) if future else None


def next_action(jobs: list[dict[str, Any]], dests: dict[str, dict[str, Any]], now: float,
                rng: random.Random | None = None,
                policy: OutboxPolicy | None = None) -> Send | Wait | Idle:
    """What a sender should do now: ``Send(job)``, ``Wait(until)`` or ``Idle``.

    ``jobs`` and ``dests`` are snapshots of the persisted rows; nothing else is
    needed, so a restarted process decides exactly as the crashed one would.
    ``rng`` is accepted for a uniform signature (the choice is deterministic).
    """
    del rng
    job = pick(jobs, dests, now, policy)
    if job is not None:
        return Send(job)
    live = [j for j in jobs
            if j["state"] in (QUEUED, LEASED)
            and not (dests.get(j["destination"]) or {}).get("paused")]
    wake = next_wakeup(live, {n: d for n, d in dests.items() if not d.get("paused")}, now)
    return Wait(wake) if wake is not None else Idle()


def on_success(job: dict[str, Any], now: float) -> dict[str, Any]:
    """The job row's fields after a delivered attempt."""
    return {"state": transition(job["state"], "success"), "bytes_sent": job["bytes_total"],
            "lease_owner": None, "lease_until": None, "done_at": now, "updated_at": now,
            "attempts": int(job["attempts"]) + 1, "last_error": None}


def lease_expired(job: dict[str, Any], now: float) -> bool:
    """A leased row without a lease end (never written by :func:`claim`) counts as
    expired, so no row can hold a job forever."""
    return job["state"] == LEASED and (job.get("lease_until") is None
                                       or float(job["lease_until"]) <= now)


def on_lease_expired(job: dict[str, Any], now: float) -> dict[str, Any]:
    """The job row's fields once its sender is presumed dead (no attempt counted).

    :func:`claim` treats an expired lease as claimable directly; this is for a
    sweeper or a report that wants the row to read ``queued`` again.
    """
    if not lease_expired(job, now):
        raise TransitionError(f"job {job.get('job_id')} holds a live lease until "
                              f"{job.get('lease_until')}")
    return {"state": transition(job["state"], "lease_expired"), "lease_owner": None,
            "lease_until": None, "next_attempt_at": now, "updated_at": now}
