"""The outbox: pure core properties and its shell, on SQLite and on PostgreSQL."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fenji.gateway.store.db import Store
from fenji.routing import outbox as core
from fenji.routing import outbox_db as db
from fenji.routing.outbox import DeadLetter, OutboxPolicy, Retry

POLICY = OutboxPolicy(base_backoff_s=1.0, max_backoff_s=100.0, jitter=0.25, max_attempts=10,
                      lease_s=30.0, breaker_threshold=3, breaker_open_s=20.0)


@given(attempts=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_backoff_is_capped_with_jitter(attempts: int, seed: int) -> None:
    d = core.backoff_s(attempts, POLICY, random.Random(seed))
    assert 0 <= d <= POLICY.max_backoff_s * (1 + POLICY.jitter)
    assert d >= min(POLICY.max_backoff_s, 2 ** (attempts - 1)) * (1 - POLICY.jitter) - 1e-9


@given(attempts=st.integers(1, 20), retryable=st.booleans())
def test_failure_decision(attempts: int, retryable: bool) -> None:
    out = core.on_failure(attempts, 0.0, 10.0, "boom", retryable, POLICY, random.Random(1))
    if not retryable or attempts >= POLICY.max_attempts:
        assert isinstance(out, DeadLetter) and "boom" in out.reason
    else:
        assert isinstance(out, Retry) and out.at > 10.0


def _job(i: int, prio: int, state: str = "queued", dest: str = "c", **kw: object) -> dict:  # type: ignore[type-arg]
    j = {"job_id": i, "priority": prio, "state": state, "destination": dest,
         "next_attempt_at": 0.0, "created_at": float(i), "lease_until": None}
    j.update(kw)
    return j


@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["queued", "leased", "done",
                                                                "dead"]),
                          st.sampled_from(["a", "b"]), st.floats(0, 200),
                          st.one_of(st.none(), st.floats(0, 200))), max_size=30),
       st.booleans(), st.floats(0, 200))
@settings(max_examples=300)
def test_pick_respects_pause_breaker_and_priority(rows, pause_a, now) -> None:  # type: ignore[no-untyped-def]
    jobs = [_job(i, p, s, d, next_attempt_at=n, lease_until=lu)
            for i, (p, s, d, n, lu) in enumerate(rows)]
    dests = {"a": {"name": "a", "paused": int(pause_a), "breaker": "closed"},
             "b": {"name": "b", "paused": 0, "breaker": "open", "open_until": 100.0}}
    got = core.pick(jobs, dests, now)
    if got is None:
        return
    assert got["state"] in ("queued", "leased")
    assert not (got["destination"] == "a" and pause_a)
    assert not (got["destination"] == "b" and now < 100.0)
    if got["state"] == "leased":  # only an expired lease is reclaimed
        assert got["lease_until"] is None or got["lease_until"] <= now
    # nothing claimable outranks it
    leased: dict[str, int] = {}  # live leases: a half-open destination lets one probe go
    for j in jobs:
        if j["state"] == "leased" and not core.lease_expired(j, now):
            leased[j["destination"]] = leased.get(j["destination"], 0) + 1
    for j in jobs:
        if core.claimable(j, dests, now, leased) and j is not got:
            assert (j["priority"], j["created_at"]) >= (got["priority"], got["created_at"]) \
                or (got["destination"] == "b")


def test_transitions_table_rejects_nonsense() -> None:
    assert core.transition("queued", "claim") == "leased"
    with pytest.raises(core.TransitionError):
        core.transition("done", "claim")


def test_breaker_opens_then_half_open_probe() -> None:
    d: dict | None = None  # type: ignore[type-arg]
    for _ in range(POLICY.breaker_threshold):
        d = {"name": "c", **core.breaker_after(d, False, 0.0, POLICY)}
    assert core.breaker_state(d, 1.0) == "open"
    assert core.breaker_state(d, 25.0) == "half-open"
    d = {"name": "c", **core.breaker_after(d, False, 25.0, POLICY)}  # probe failed
    assert core.breaker_state(d, 26.0) == "open"
    d = {"name": "c", **core.breaker_after(d, True, 50.0, POLICY)}
    assert core.breaker_state(d, 50.0) == "closed"


@pytest.fixture
def store(tmp_path: Path, index_url: str):  # type: ignore[no-untyped-def]
    s = Store(tmp_path / "s", index_url=index_url)
    yield s
    s.close()


def test_enqueue_idempotent_and_stat_first(store: Store) -> None:
    a = db.enqueue(store, "b-routine", "c1", "center", 2, 100, now=1.0)
    assert db.enqueue(store, "b-routine", "c1", "center", 2, 100, now=2.0) == a
    db.enqueue(store, "b-stat", "c2", "center", 0, 10, now=3.0)
    first = db.claim(store, "w1", 5.0, POLICY)
    assert first is not None and first["bundle_id"] == "b-stat"
    second = db.claim(store, "w1", 5.0, POLICY)
    assert second is not None and second["bundle_id"] == "b-routine"
    assert db.claim(store, "w1", 5.0, POLICY) is None


def test_crashed_sender_lease_expires(tmp_path: Path, index_url: str) -> None:
    s1 = Store(tmp_path / "s", index_url=index_url)
    db.enqueue(s1, "b", "c", "center", 2, 100, now=0.0)
    job = db.claim(s1, "dead-sender", 1.0, POLICY)
    assert job is not None
    del s1  # the sender process died without completing
    s2 = Store(tmp_path / "s", index_url=index_url)
    assert db.claim(s2, "new", 10.0, POLICY) is None  # lease still held
    again = db.claim(s2, "new", 1.0 + POLICY.lease_s + 0.1, POLICY)
    assert again is not None and again["job_id"] == job["job_id"]
    s2.close()


def test_retry_schedule_then_dead_letter_with_reason(store: Store) -> None:
    pol = OutboxPolicy(base_backoff_s=1.0, max_attempts=3, jitter=0.0, breaker_threshold=99)
    db.enqueue(store, "b", "c", "center", 2, 100, now=0.0)
    now = 0.0
    decisions = []
    for _ in range(3):
        job = db.claim(store, "w", now, pol)
        assert job is not None
        decisions.append(db.fail(store, job["job_id"], "w", "link down", now, pol,
                                 random.Random(0)))
        if isinstance(decisions[-1], Retry):
            assert db.claim(store, "w", now, pol) is None  # not before its time
            now = decisions[-1].at
    assert [type(d).__name__ for d in decisions] == ["Retry", "Retry", "DeadLetter"]
    (row,) = db.list_jobs(store, state="dead")
    assert "link down" in row["last_error"] and row["attempts"] == 3
    db.requeue_dead(store, row["job_id"], now)
    assert db.claim(store, "w", now, pol) is not None


def test_pause_resume_and_breaker(store: Store) -> None:
    db.enqueue(store, "b", "c", "center", 2, 100, now=0.0)
    db.pause(store, "center")
    assert db.claim(store, "w", 1.0, POLICY) is None
    db.pause(store, "center", False)
    job = db.claim(store, "w", 1.0, POLICY)
    assert job is not None
    with pytest.raises(db.OutboxError, match="unknown destination 'mars'"):
        db.pause(store, "mars")
    now = 1.0
    for _ in range(POLICY.breaker_threshold):
        db.fail(store, job["job_id"], "w", "refused", now, POLICY, random.Random(0))
        now += 1000
        job = db.claim(store, "w", now, POLICY)
        assert job is not None
    (d,) = db.destinations(store)
    assert d["breaker"] == "open"


def test_two_claimers_never_share_a_job(store: Store) -> None:
    for i in range(40):
        db.enqueue(store, f"b{i}", "c", "center", i % 3, 10, now=float(i))
    got: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            j = db.claim(store, name, 100.0, POLICY)
            if j is None:
                return
            with lock:
                got.append(j["job_id"])

    ts = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(got) == len(set(got)) == 40


def test_a_flaky_link_that_made_progress_is_retried_soon() -> None:
    slow = core.on_failure(9, 0.0, 100.0, "reset", True, POLICY, random.Random(0))
    soon = core.on_failure(9, 0.0, 100.0, "reset", True, POLICY, random.Random(0),
                           progressed=True)
    assert isinstance(slow, Retry) and isinstance(soon, Retry)
    assert soon.at - 100.0 <= POLICY.base_backoff_s * (1 + POLICY.jitter) < slow.at - 100.0


def test_breaker_opens_after_n_failures_then_one_half_open_probe(store: Store) -> None:
    pol = OutboxPolicy(base_backoff_s=1.0, jitter=0.0, breaker_threshold=3,
                       breaker_open_s=20.0, max_attempts=99)
    for i in range(3):
        db.enqueue(store, f"b{i}", "c", "center", 2, 10, now=float(i))
    db.enqueue(store, "elsewhere", "c", "other", 2, 10, now=5.0)
    now = 10.0
    for _ in range(pol.breaker_threshold):
        j = db.claim(store, "w", now, pol)
        assert j is not None and j["destination"] == "center"
        db.fail(store, j["job_id"], "w", "connection refused", now, pol, random.Random(0))
    (d,) = [d for d in db.destinations(store) if d["name"] == "center"]
    assert d["breaker"] == "open" and d["consecutive_failures"] == 3
    # open: center gets nothing, the other destination still goes
    j = db.claim(store, "w", now + 5, pol)
    assert j is not None and j["destination"] == "other"
    assert db.claim(store, "w", now + 5, pol) is None
    # half-open: exactly one probe in flight
    probe = db.claim(store, "w", now + 25, pol)
    assert probe is not None and probe["destination"] == "center"
    assert db.claim(store, "w", now + 25, pol) is None
    db.complete(store, probe["job_id"], "w", now + 26, pol)
    (d,) = [d for d in db.destinations(store) if d["name"] == "center"]
    assert d["breaker"] == "closed" and d["consecutive_failures"] == 0
    assert db.claim(store, "w", now + 26, pol) is not None


def test_heartbeat_keeps_the_lease_and_a_stale_sender_changes_nothing(store: Store) -> None:
    db.enqueue(store, "b", "c", "center", 2, 100, now=0.0)
    job = db.claim(store, "w1", 0.0, POLICY)
    assert job is not None
    assert db.heartbeat(store, job["job_id"], "w1", 40, 25.0, POLICY)  # lease until 55
    assert db.claim(store, "w2", 50.0, POLICY) is None
    again = db.claim(store, "w2", 56.0, POLICY)  # w1 went silent: w2 takes over
    assert again is not None and again["bytes_sent"] == 40
    out = db.fail(store, job["job_id"], "w1", "late error from w1", 57.0, POLICY,
                  random.Random(0))
    assert isinstance(out, core.LeaseLost) and out.owner == "w2"
    assert not db.progress(store, job["job_id"], "w1", 99, 57.0, POLICY)
    (row,) = db.list_jobs(store)
    assert row["state"] == "leased" and row["lease_owner"] == "w2" and row["last_error"] is None


def test_resume_and_requeue_errors_name_the_value(store: Store) -> None:
    db.enqueue(store, "b", "c", "center", 2, 100, now=0.0)
    db.pause(store, "center")
    assert db.claim(store, "w", 1.0, POLICY) is None
    db.resume(store, "center")
    assert db.claim(store, "w", 1.0, POLICY) is not None
    with pytest.raises(db.OutboxError, match="4242"):
        db.requeue_dead(store, 4242, 1.0)
    with pytest.raises(db.OutboxError, match="not dead"):
        db.requeue_dead(store, 1, 1.0)


def test_two_stores_in_two_threads_never_share_a_job(tmp_path: Path, index_url: str) -> None:
    setup = Store(tmp_path / "s", index_url=index_url)
    for i in range(30):
        db.enqueue(setup, f"b{i}", "c", "center", i % 3, 10, now=float(i))
    setup.close()
    got: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        s = Store(tmp_path / "s", index_url=index_url)
        try:
            while (j := db.claim(s, name, 100.0, POLICY)) is not None:
                with lock:
                    got.append(j["job_id"])
        finally:
            s.close()

    ts = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(got) == sorted(set(got)) and len(got) == 30


def test_a_configured_destination_can_be_paused_before_any_job(store: Store) -> None:
    with pytest.raises(db.OutboxError, match="'center'"):
        db.pause(store, "center")
    db.pause(store, "center", configured=["center"])
    db.enqueue(store, "b", "c", "center", 0, 10, now=0.0)
    assert db.claim(store, "w", 1.0, POLICY) is None
    db.resume(store, "center")
    assert db.claim(store, "w", 1.0, POLICY) is not None
