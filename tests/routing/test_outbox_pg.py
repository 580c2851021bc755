"""The outbox on PostgreSQL: claimers in several processes (issue 14).

Claims read their candidates ``FOR UPDATE SKIP LOCKED``: a claimer never waits
for another, never gets a job another holds, and every job is claimed once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _pg import PgCluster

from fenji.gateway.store.db import Store
from fenji.routing import outbox_db as db
from fenji.routing.outbox import OutboxPolicy

POLICY = OutboxPolicy(lease_s=3600.0)

# A claimer process: opens the store, says "ready", waits for "go" on stdin, then
# claims (and completes) jobs until none is left, printing each job id.
CLAIMER = """
import sys
from fenji.gateway.store.db import Store
from fenji.routing import outbox_db as db
from fenji.routing.outbox import OutboxPolicy
store = Store(sys.argv[1], index_url=sys.argv[2])
name, policy = sys.argv[3], OutboxPolicy(lease_s=3600.0)
print("ready", flush=True)
sys.stdin.readline()
while (job := db.claim(store, name, 100.0, policy)) is not None:
    print(job["job_id"], flush=True)
    db.complete(store, job["job_id"], name, 100.0, policy)
store.close()
print("done", flush=True)
"""


def test_a_claim_skips_the_jobs_another_claimer_holds(tmp_path: Path,
                                                      pg_cluster: PgCluster) -> None:
    url = pg_cluster.new_database()
    a, b = Store(tmp_path / "a", index_url=url), Store(tmp_path / "b", index_url=url)
    for i in range(3):
        db.enqueue(a, f"b{i}", "c", "center", 2, 10, now=0.0)
    with a.atomic() as con:
        held = db._claimable(con)  # A is choosing: its candidates are locked
        assert len(held) == 3
        # B neither waits for A (that would hang here) nor gets what A holds.
        assert db.claim(b, "w2", 1.0, POLICY) is None
    got = db.claim(b, "w2", 1.0, POLICY)
    assert got is not None and got["lease_owner"] == "w2"
    a.close()
    b.close()


def test_claimers_in_four_processes_take_each_job_once(tmp_path: Path,
                                                       pg_cluster: PgCluster) -> None:
    url = pg_cluster.new_database()
    setup = Store(tmp_path / "setup", index_url=url)
    n_jobs = 200
    for i in range(n_jobs):
        db.enqueue(setup, f"b{i}", f"c{i}", "center", i % 3, 10, now=0.0)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path / f"p{k}"), url,
                               f"w{k}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for k in range(4)]
    for p in procs:  # all four connected before any claims
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    claimed: list[int] = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0 and out.endswith("done\n")
        claimed += [int(x) for x in out.split() if x.isdigit()]
    assert len(claimed) == len(set(claimed)) == n_jobs
    jobs = db.list_jobs(setup)
    assert {j["state"] for j in jobs} == {"done"} and len(jobs) == n_jobs
    setup.close()
