"""A center's processes in the index, and the index's hold across processes (issue 14).

On SQLite and on PostgreSQL (the ``index_url`` fixture):

* a process of this machine whose pid is gone is dead at once, another machine's
  when its row has not moved for ``node.process_lease_s`` of the watcher's own
  clock (a remote wall clock far off is not a death);
* a beat hands the dead's outbox leases back to the queue at once, never a live
  process's, and forgets the dead;
* a key held by one process (a release in two commits) is seen held by another
  process, and free again when the holder is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from _wait import until

from fenji.gateway.store import processes
from fenji.gateway.store.db import Store
from fenji.routing import outbox_db as db
from fenji.routing.outbox import OutboxPolicy

POLICY = OutboxPolicy(lease_s=60.0)
HERE = "m1/4026531836"
THERE = "m2/4026531836"


def _owners(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(str(r["owner"]) for r in rows)


def test_watch_local_death_at_once_remote_only_after_its_row_stops() -> None:
    w = processes.Watch(HERE, lease_s=30.0, running=lambda pid: pid == 10)
    rows = [{"owner": f"c@{HERE}:10", "host": HERE, "pid": 10, "seen_at": 1.0},
            {"owner": f"c@{HERE}:11", "host": HERE, "pid": 11, "seen_at": 1.0},
            # another machine, its wall clock an hour behind ours: not a death
            {"owner": f"c@{THERE}:11", "host": THERE, "pid": 11, "seen_at": -3600.0}]
    assert _owners(w.dead(rows, 0.0)) == [f"c@{HERE}:11"]  # pid 11 is gone here
    for t in (10.0, 20.0, 29.0):  # both beat: alive, whatever their clocks say
        rows[0]["seen_at"] += 10
        rows[2]["seen_at"] += 10
        assert _owners(w.dead(rows, t)) == [f"c@{HERE}:11"]
    rows[0]["seen_at"] += 10  # the remote one stops beating at t = 29
    assert _owners(w.dead(rows, 58.0)) == [f"c@{HERE}:11"]
    assert _owners(w.dead(rows, 59.5)) == [f"c@{HERE}:11", f"c@{THERE}:11"]
    # A watcher that starts late waits a whole lease before calling a remote row dead.
    late = processes.Watch(HERE, lease_s=30.0, running=lambda pid: True)
    assert late.dead(rows[2:], 100.0) == [] and late.dead(rows[2:], 129.0) == []
    assert _owners(late.dead(rows[2:], 130.5)) == [f"c@{THERE}:11"]


def _gone_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_beat_hands_on_the_dead_leases_only(tmp_path: Path, index_url: str) -> None:
    store = Store(tmp_path / "s", index_url=index_url)
    try:
        host = processes.host_id()
        me = processes.owner_name("center", host)
        local_dead = processes.owner_name("center", host, _gone_pid())
        remote = processes.owner_name("center", THERE, 7)
        for owner, host_of, pid in ((local_dead, host, int(local_dead.rsplit(":", 1)[1])),
                                    (remote, THERE, 7)):
            processes.beat(store.index, owner, host_of, pid, 0.0, 1.0)
        jobs = {}
        for owner in (local_dead, remote, me):
            jid = db.enqueue(store, f"b-{owner}", "case", "edge", 2, 100, 0.0)
            job = db.claim(store, owner, 0.0, POLICY)
            assert job is not None and job["job_id"] == jid
            jobs[owner] = jid
        mono = [0.0]
        hb = processes.Heartbeat(store.index, me, host, 5.0, 30.0,
                                 on_dead=lambda o, now: db.return_leases(store, o, now),
                                 clock=lambda: 1000.0 + mono[0], monotonic=lambda: mono[0])

        def leased_by() -> dict[int, Any]:
            return {j["job_id"]: j["lease_owner"] for j in db.list_jobs(store)}

        # The local process whose pid is gone: at the first beat.
        assert hb.step() == [local_dead]
        assert leased_by() == {jobs[local_dead]: None, jobs[remote]: remote, jobs[me]: me}
        # The remote one beats on: alive however long its jobs take.
        for t in (20.0, 40.0):
            mono[0] = t
            processes.beat(store.index, remote, THERE, 7, 0.0, t)
            assert hb.step() == []
        # ... until it stops: dead a lease after its last beat, its job back in the queue.
        mono[0] = 69.0
        assert hb.step() == []
        mono[0] = 70.5
        assert hb.step() == [remote]
        assert leased_by() == {jobs[local_dead]: None, jobs[remote]: None, jobs[me]: me}
        assert [r["owner"] for r in processes.rows(store.index)] == [me]
        # Handed-on jobs are claimable at once (no wait for their 60 s lease).
        again = db.claim(store, me, 71.0, POLICY)
        assert again is not None and again["job_id"] in (jobs[local_dead], jobs[remote])
        hb.stop()
        assert processes.rows(store.index) == []
    finally:
        store.close()


HOLDER = """
import sys, time
from fenji.gateway.store.db import Store
s = Store(sys.argv[1], index_url=sys.argv[2])
with s.index.hold(sys.argv[3]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_hold_is_seen_by_other_processes_and_dies_with_its_holder(
        tmp_path: Path, index_url: str) -> None:
    store = Store(tmp_path / "s", index_url=index_url)
    key = "release:0123456789abcdef"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "s"), index_url,
                               key], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert store.index.held(key)
        assert not store.index.held("release:another")
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
        until(lambda: not store.index.held(key), 60, "the killed holder's lock to go")
        with store.index.hold(key):  # and it can be taken again
            assert store.index.held(key)
        assert not store.index.held(key)
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
        store.close()
