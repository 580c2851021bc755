"""The outbox's pure core: next_action, crash recovery from rows, half-open probes.

No store, no clock: ``now`` and a seeded ``random.Random`` are passed in.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fenji.routing import outbox as core
from fenji.routing.outbox import Idle, OutboxPolicy, Send, Wait

POLICY = OutboxPolicy(base_backoff_s=1.0, max_backoff_s=50.0, jitter=0.2, max_attempts=8,
                      lease_s=30.0, breaker_threshold=3, breaker_open_s=20.0)

_rows = st.lists(st.tuples(st.integers(0, 2),
                           st.sampled_from(["queued", "leased", "done", "dead"]),
                           st.sampled_from(["a", "b", "c"]), st.floats(0, 300),
                           st.one_of(st.none(), st.floats(0, 300))), max_size=25)
_dest = st.fixed_dictionaries({
    "paused": st.integers(0, 1), "breaker": st.sampled_from(["closed", "open"]),
    "open_until": st.one_of(st.none(), st.floats(0, 300)), "consecutive_failures": st.just(0)})


def _jobs(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{"job_id": i, "priority": p, "state": s, "destination": d, "next_attempt_at": n,
             "lease_until": lu if s == "leased" else None, "created_at": float(i),
             "attempts": 0, "bytes_total": 10}
            for i, (p, s, d, n, lu) in enumerate(rows)]


@given(_rows, st.dictionaries(st.sampled_from(["a", "b", "c"]), _dest), st.floats(0, 300),
       st.integers(0, 2**32))
@settings(max_examples=300, deadline=None)
def test_next_action_never_sends_to_paused_or_open(rows, dests, now, seed) -> None:  # type: ignore[no-untyped-def]
    jobs = _jobs(rows)
    dests = {n: {"name": n, **d} for n, d in dests.items()}
    act = core.next_action(jobs, dests, now, random.Random(seed), POLICY)
    if isinstance(act, Send):
        d = dests.get(act.job["destination"])
        assert not (d and d["paused"])
        assert core.breaker_state(d, now) != core.OPEN
        assert act.job["state"] in ("queued", "leased")
        # nothing ready has a better (priority, age) key
        leased: dict[str, int] = {}
        for j in jobs:
            if j["state"] == "leased" and not core.lease_expired(j, now):
                leased[j["destination"]] = leased.get(j["destination"], 0) + 1
        ready = [j for j in jobs
                 if j is not act.job and core.claimable(j, dests, now, leased, POLICY)]
        for j in ready:
            assert (j["priority"], j["created_at"]) >= (act.job["priority"],
                                                        act.job["created_at"])
    elif isinstance(act, Wait):
        assert act.until > now
    else:
        assert isinstance(act, Idle)


@given(_rows, st.floats(0, 300), st.floats(0, 1000))
@settings(max_examples=300, deadline=None)
def test_crash_never_leaves_a_job_stuck(rows, crash_at, later) -> None:  # type: ignore[no-untyped-def]
    """Forget everything but the rows: every queued/leased job of an unpaused,
    never-failing destination is sent eventually, just by waiting."""
    jobs = _jobs(rows)
    dests: dict[str, dict[str, Any]] = {}
    now = crash_at
    sent: set[int] = set()
    live = {j["job_id"] for j in jobs if j["state"] in ("queued", "leased")}
    for _ in range(4 * len(jobs) + 4):
        act = core.next_action(jobs, dests, now, random.Random(0), POLICY)
        if isinstance(act, Idle):
            break
        if isinstance(act, Wait):
            assert act.until > now
            now = act.until
            continue
        j = act.job
        j.update(core.on_success({**j, "state": "leased"}, now))
        sent.add(j["job_id"])
    assert sent == live


@given(st.integers(0, 5), st.integers(0, 5), st.floats(0, 100))
def test_stat_always_claimed_before_routine(n_stat: int, n_routine: int, now: float) -> None:
    rows = [(2, "queued", "a", 0.0, None)] * n_routine + [(0, "queued", "b", 0.0, None)] * n_stat
    act = core.next_action(_jobs(rows), {}, now, random.Random(0), POLICY)
    if n_stat:
        assert isinstance(act, Send) and act.job["priority"] == 0
    elif n_routine:
        assert isinstance(act, Send) and act.job["priority"] == 2
    else:
        assert isinstance(act, Idle)


@given(st.integers(1, 80), st.integers(0, 2**32))
def test_retry_never_later_than_cap_plus_jitter(attempts: int, seed: int) -> None:
    out = core.on_failure(attempts, 0.0, 5.0, "link down", True, POLICY, random.Random(seed))
    if attempts >= POLICY.max_attempts:
        assert isinstance(out, core.DeadLetter) and "link down" in out.reason
    else:
        assert isinstance(out, core.Retry)
        assert 5.0 < out.at <= 5.0 + POLICY.max_backoff_s * (1 + POLICY.jitter)


def test_too_old_is_dead_lettered_with_reason() -> None:
    pol = OutboxPolicy(max_age_s=100.0)
    out = core.on_failure(1, 0.0, 150.0, "HTTP 503", True, pol, random.Random(0))
    assert isinstance(out, core.DeadLetter) and "HTTP 503" in out.reason


def test_half_open_lets_only_the_probes_through() -> None:
    pol = OutboxPolicy(half_open_probes=2)
    dests = {"a": {"name": "a", "paused": 0, "breaker": "open", "open_until": 10.0}}
    jobs = _jobs([(2, "queued", "a", 0.0, None)] * 4)
    assert isinstance(core.next_action(jobs, dests, 5.0, None, pol), Wait)
    for expect_send in (True, True, False):  # at t=11 half-open: two probes, not three
        act = core.next_action(jobs, dests, 11.0, None, pol)
        assert isinstance(act, Send) is expect_send
        if isinstance(act, Send):
            act.job.update(state="leased", lease_until=11.0 + pol.lease_s)
    closed = core.breaker_after(dests["a"], True, 12.0, pol)
    assert closed["breaker"] == "closed"
    reopened = core.breaker_after(dests["a"], False, 12.0, pol)
    assert reopened["breaker"] == "open" and reopened["open_until"] == 12.0 + pol.breaker_open_s


def test_lease_expiry_and_success_transitions() -> None:
    job = _jobs([(1, "leased", "a", 0.0, 30.0)])[0]
    with pytest.raises(core.TransitionError):
        core.on_lease_expired(job, 29.0)
    assert core.on_lease_expired(job, 30.0)["state"] == "queued"
    done = core.on_success(job, 31.0)
    assert done["state"] == "done" and done["bytes_sent"] == 10 and done["attempts"] == 1
    with pytest.raises(core.TransitionError):
        core.on_success({**job, "state": "dead"}, 31.0)


def test_paused_only_work_is_idle_and_policy_is_checked() -> None:
    jobs = _jobs([(0, "queued", "a", 50.0, None)])
    assert isinstance(core.next_action(jobs, {"a": {"paused": 1}}, 0.0), Idle)
    assert core.next_action(jobs, {}, 0.0) == Wait(50.0)
    with pytest.raises(ValueError):
        OutboxPolicy(jitter=1.5)


@given(st.lists(st.booleans(), max_size=30), st.integers(1, 6))
def test_breaker_follows_its_table(outcomes: list[bool], threshold: int) -> None:
    """Open exactly when ``threshold`` consecutive failures happened (or a half-open
    probe failed); any success closes it."""
    pol = OutboxPolicy(breaker_threshold=threshold, breaker_open_s=10.0)
    d: dict[str, Any] | None = None
    now, run = 0.0, 0
    for ok in outcomes:
        was = core.breaker_state(d, now)
        d = core.breaker_after(d, ok, now, pol)
        run = 0 if ok else run + 1
        assert d["consecutive_failures"] == run
        if ok:
            assert d["breaker"] == "closed"
        elif run >= threshold or was == core.HALF_OPEN:
            assert d["breaker"] == "open" and d["open_until"] == now + 10.0
        else:
            assert d["breaker"] == "closed"
        now += 7.0  # sometimes inside the open window, sometimes past it
