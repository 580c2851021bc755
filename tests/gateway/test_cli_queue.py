"""`fenji queue ls|pause|resume|retry` as a subprocess on a filled store."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from fenji.gateway import config as config_mod
from fenji.gateway.cli.init import init_node
from fenji.gateway.node import open_store
from fenji.routing import outbox_db as db
from fenji.routing.outbox import OutboxPolicy


def _fenji(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fenji.gateway.cli.main", *args],
                          capture_output=True, text=True, timeout=60)


def test_queue_verbs(tmp_path: Path) -> None:
    cfg_path = init_node(tmp_path / "node", allow_ae=["*"])
    store = open_store(config_mod.load(cfg_path))
    try:
        db.enqueue(store, "b-routine", "case-1", "center", 2, 1000, now=1.0)
        db.enqueue(store, "b-stat", "case-2", "center", 0, 500, now=2.0)
        job = db.claim(store, "w", 3.0, OutboxPolicy())
        assert job is not None and job["bundle_id"] == "b-stat"
        db.progress(store, job["job_id"], "w", 200, 4.0)
        db.fail(store, job["job_id"], "w", "center said 400", 5.0, rng=random.Random(0),
                retryable=False)
        dead_id = job["job_id"]
    finally:
        store.close()

    out = _fenji("queue", "ls", "--json", "--config", str(cfg_path))
    assert out.returncode == 0, out.stderr
    rows = {r["bundle_id"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {"b-routine", "b-stat"}
    assert rows["b-stat"]["state"] == "dead" and "center said 400" in rows["b-stat"]["last_error"]
    assert rows["b-stat"]["bytes_sent"] == 200 and rows["b-stat"]["attempts"] == 1
    assert rows["b-routine"]["state"] == "queued" and rows["b-routine"]["priority"] == 2
    for key in ("next_attempt_at", "bytes_total", "destination"):
        assert key in rows["b-routine"]

    table = _fenji("queue", "ls", "--config", str(cfg_path), "--state", "dead")
    assert table.returncode == 0 and "dead" in table.stdout and "center said 400" in table.stdout

    # For people: a header, named priorities, the case, times in the node's zone.
    text = cfg_path.read_text(encoding="utf-8")
    assert 'timezone = ""' in text
    cfg_path.write_text(text.replace('timezone = ""', 'timezone = "Asia/Shanghai"'),
                        encoding="utf-8")
    table = _fenji("queue", "ls", "--config", str(cfg_path))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "times in Asia/Shanghai" in lines[0]
    header = lines[1].split()
    assert header[:5] == ["JOB", "STATE", "PRIORITY", "CASE", "WHAT"]
    stat = next(ln for ln in lines if " dead " in ln)
    routine = next(ln for ln in lines if " queued " in ln)
    assert "STAT" in stat and "case-2" in stat and "p0" not in stat
    assert "routine" in routine and "case-1" in routine
    # enqueued at Unix time 1.0: 08:00:01 in Shanghai, not 00:00:01 UTC
    assert "1970-01-01 08:00:01 CST" in routine
    assert "fenji queue retry" in stat

    assert _fenji("queue", "pause", "center", "--config", str(cfg_path)).returncode == 0
    out = _fenji("queue", "ls", "--json", "--config", str(cfg_path), "--dest", "center")
    assert all(json.loads(line)["destination_paused"] for line in out.stdout.splitlines())
    assert _fenji("queue", "resume", "center", "--config", str(cfg_path)).returncode == 0

    bad = _fenji("queue", "pause", "nowhere", "--config", str(cfg_path))
    assert bad.returncode != 0 and "nowhere" in bad.stderr
    bad = _fenji("queue", "retry", "9999", "--config", str(cfg_path))
    assert bad.returncode != 0 and "9999" in bad.stderr

    ok = _fenji("queue", "retry", str(dead_id), "--config", str(cfg_path), "--operator",
                "ops Li")
    assert ok.returncode == 0, ok.stderr
    events = json.loads(_fenji("audit", "ls", "--json", "--config", str(cfg_path)).stdout)
    retried = [e for e in events if e["kind"] == "retried"]
    assert len(retried) == 1 and retried[0]["actor"] == "ops Li"
    assert retried[0]["object"] == "b-stat" and "center said 400" in json.dumps(retried[0])
    out = _fenji("queue", "ls", "--json", "--config", str(cfg_path), "--state", "queued")
    assert {json.loads(line)["bundle_id"] for line in out.stdout.splitlines()} == {
        "b-routine", "b-stat"}


def test_ls_unknown_destination_is_named(tmp_path: Path) -> None:
    cfg_path = init_node(tmp_path / "node", allow_ae=["*"])
    out = _fenji("queue", "ls", "--config", str(cfg_path), "--dest", "atlantis")
    assert out.returncode == 1 and "atlantis" in out.stderr
    empty = _fenji("queue", "ls", "--config", str(cfg_path))
    assert empty.returncode == 0 and "outbox empty" in empty.stdout
