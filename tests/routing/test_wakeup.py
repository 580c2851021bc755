"""The sender sleeps until the outbox core's Wait(until) or a wake-up, never polls:
a job queued by another process wakes it through the FIFO in the store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pg import PgCluster
from _wait import until

from fenji.gateway import config as config_mod
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.node import open_store
from fenji.routing import outbox_db, sender, wakeup

pytestmark = pytest.mark.timeout(300)


@contextlib.contextmanager
def _running(s: sender.SenderLoop) -> Iterator[sender.SenderLoop]:
    """``s`` running on an event loop of its own thread, stopped at the end."""
    stop: list[asyncio.Event] = []
    loop = asyncio.new_event_loop()

    async def main() -> None:
        stop.append(asyncio.Event())
        await s.run(stop[0])

    t = threading.Thread(target=loop.run_until_complete, args=(main(),))
    t.start()
    try:
        yield s
    finally:
        until(lambda: stop, 60, "the sender's loop to start")
        loop.call_soon_threadsafe(stop[0].set)
        t.join(60)


def test_poke_without_a_listener_is_harmless(tmp_path: Path) -> None:
    assert wakeup.poke(tmp_path / "nobody") is False
    fifo = wakeup.WakeFifo(tmp_path / "w")
    fifo.close()
    assert wakeup.poke(tmp_path / "w") is False  # FIFO there, nobody reading


def test_a_poke_from_another_process_wakes_the_reader(tmp_path: Path) -> None:
    fifo = wakeup.WakeFifo(tmp_path / "w")
    try:
        assert fifo.drain() == 0
        code = ("import sys; from pathlib import Path; from fenji.routing.wakeup import poke; "
                "sys.exit(0 if poke(Path(sys.argv[1])) else 3)")
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "w")], check=True)
        ready, _, _ = select.select([fifo.fileno()], [], [], 60.0)
        assert ready and fifo.drain() >= 1
        ready, _, _ = select.select([fifo.fileno()], [], [], 0)
        assert not ready  # drained: the next sleep is a real sleep
    finally:
        fifo.close()


def test_a_file_that_is_not_a_fifo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "w").write_text("x")
    with pytest.raises(OSError, match="not a FIFO"):
        wakeup.WakeFifo(tmp_path / "w")


def test_sender_wakes_for_a_job_queued_in_another_process(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With the safety recheck an hour away, only the wake-up can make the sender act."""
    monkeypatch.setattr(sender, "IDLE_RECHECK_S", 3600.0)
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    edge.add_peer(center, default=True)
    cfg = config_mod.load(edge.config, env={})
    store = open_store(cfg)
    with _running(sender.SenderLoop(cfg, store)) as s:
        assert s.asleep.wait(60)  # asleep with nothing queued: only a wake-up can help
        code = ("import sys, time; from fenji.gateway import config as c; "
                "from fenji.gateway.node import open_store; from fenji.routing import outbox_db;"
                "s = open_store(c.load(sys.argv[1], env={})); "
                "outbox_db.enqueue(s, 'gone-bundle', 'case-x', 'center', 0, 1000, time.time())")
        subprocess.run([sys.executable, "-c", code, str(edge.config)], check=True)
        deadline = time.monotonic() + 120
        jobs: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            jobs = outbox_db.list_jobs(store)
            if jobs and jobs[0]["state"] == "dead":
                break
            time.sleep(0.2)
        assert jobs and jobs[0]["state"] == "dead", json.dumps(jobs, default=str)
        assert "missing" in jobs[0]["last_error"]
    store.close()


def test_a_job_queued_on_another_machine_wakes_the_sender_through_postgresql(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_cluster: PgCluster) -> None:
    """Two store folders on one PostgreSQL index, as two machines of a center: the
    FIFO of one never reaches the other, and with the recheck an hour away only the
    index's NOTIFY can make the sender act on a job the other "machine" queued."""
    monkeypatch.setattr(sender, "IDLE_RECHECK_S", 3600.0)
    env = {"FENJI_STORE_INDEX_URL": pg_cluster.new_database()}
    edge = NodeProcess(tmp_path / "b", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    edge.add_peer(center, default=True)
    other = tmp_path / "a"  # the same config and keys, its own store folder
    other.mkdir()
    shutil.copy(edge.config, other / edge.config.name)
    shutil.copytree(edge.directory / "keys", other / "keys")
    cfg = config_mod.load(edge.config, env=env)
    store = open_store(cfg)
    with _running(sender.SenderLoop(cfg, store)) as s:
        # Asleep and listening (a listener's first call is when LISTEN took effect).
        until(lambda: s.asleep.is_set() and s.index_wakeups >= 1, 60, "sender asleep")
        before = s.index_wakeups
        code = ("import sys, time; from fenji.gateway import config as c; "
                "from fenji.gateway.node import open_store; from fenji.routing import outbox_db;"
                "s = open_store(c.load(sys.argv[1], env={'FENJI_STORE_INDEX_URL': sys.argv[2]}));"
                "outbox_db.enqueue(s, 'gone-bundle', 'case-x', 'center', 0, 1000, time.time())")
        subprocess.run([sys.executable, "-c", code, str(other / edge.config.name),
                        env["FENJI_STORE_INDEX_URL"]], check=True)
        assert (other / "store").is_dir() and other / "store" != store.root
        jobs: list[dict] = []  # type: ignore[type-arg]

        def dead() -> bool:
            jobs[:] = outbox_db.list_jobs(store)
            return bool(jobs) and jobs[0]["state"] == "dead"

        until(dead, 120, "the job handled")
        assert "missing" in jobs[0]["last_error"]
        assert s.index_wakeups > before
    store.close()
