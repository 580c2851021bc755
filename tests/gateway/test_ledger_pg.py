"""The ledger on PostgreSQL: several center processes append to ONE chain (issue 14).

Each append reads the previous hash and inserts under a transaction-level
advisory lock (gateway/audit/chain.py), so writers in different processes
never fork the chain; ``fenji audit verify`` then holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _pg import PgCluster

from fenji.gateway.cli.init import init_node

# A writer: the center's config (index_url from FENJI_STORE_INDEX_URL), the node's
# store with its signer; says "ready", waits for "go", appends N events.
WRITER = """
import sys
from fenji.gateway import config as config_mod
from fenji.gateway.audit import ledger
from fenji.gateway.node import open_store
cfg = config_mod.load(sys.argv[1])
store = open_store(cfg)
name, n = sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    ledger.record(store, "opened", node=cfg.node.name, actor=name, role="reader",
                  obj=f"{name}-{i}", detail={"i": i, "who": "王小明"})
store.close()
print("done", flush=True)
"""


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fenji.gateway.cli.main", *args],
                          capture_output=True, text=True, timeout=300, check=False, env=env)


def test_four_writer_processes_keep_one_verifiable_chain(tmp_path: Path,
                                                         pg_cluster: PgCluster) -> None:
    conf = init_node(tmp_path / "center", role="center", name="center", allow_ae=["*"])
    env = {**os.environ, "FENJI_STORE_INDEX_URL": pg_cluster.new_database()}
    n_each, writers = 60, 4
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(conf), f"w{k}", str(n_each)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
             for k in range(writers)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.endswith("done\n"), err[-600:]

    ls = _cli(env, "audit", "ls", "--config", str(conf), "--json")
    assert ls.returncode == 0, ls.stderr
    events = [e for e in json.loads(ls.stdout) if e["kind"] == "opened"]
    assert len(events) == n_each * writers
    # one chain: consecutive sequence numbers, each event's prev_hash its predecessor's
    seqs = sorted(e["seq"] for e in json.loads(ls.stdout))
    assert seqs == list(range(1, len(seqs) + 1))
    assert {e["detail"]["who"] for e in events} == {"王小明"}
    # the writers really interleaved in one chain (not four chains)
    assert {e["actor"] for e in events} == {f"w{k}" for k in range(writers)}

    ok = _cli(env, "audit", "verify", "--config", str(conf))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{len(seqs)} events" in ok.stdout and "signed head" in ok.stdout
